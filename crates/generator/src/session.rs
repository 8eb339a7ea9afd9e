//! One visit as a state machine.
//!
//! A shopper lands (home, a category or straight on a product), then browses, searches and
//! views products; a product view may be followed by adding it to the cart; the visit ends
//! by leaving (bounce or abandonment) or by checking out and buying every cart line.
//! Whether a carting visit will buy is decided at its first cart addition, so the
//! configured purchase rate is exactly what the stream shows in expectation.

use std::sync::Arc;

use clickstream_model::{Event, EventTime, EventType};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::Rng;
use rand_distr::{Exp, LogNormal};
use uuid::Uuid;

use crate::config::SimConfig;
use crate::users::uuid_from;
use clickstream_model::Product;

/// Read-only things every session step needs.
pub(crate) struct World {
    pub cfg: SimConfig,
    pub catalog: Vec<Product>,
    /// Catalog index of the product with popularity rank `r` is `by_rank[r - 1]`.
    pub by_rank: Vec<usize>,
    /// Popularity weights by rank (Zipf), sampled by table lookup: `Zipf` calls `powf`
    /// per draw, which showed up in profiles.
    pub popularity: WeightedIndex<f64>,
    pub shopper_dwell: LogNormal<f64>,
    pub bot_dwell: Exp<f64>,
    pub pages: Pages,
}

/// Interned page names and landing sources, so events share them instead of allocating.
pub(crate) struct Pages {
    pub home: Arc<str>,
    pub category: Arc<str>,
    pub search: Arc<str>,
    pub product: Arc<str>,
    pub cart: Arc<str>,
    pub checkout: Arc<str>,
    /// (referrer, utm_source) pairs for organic landings.
    pub sources: Vec<(Arc<str>, Option<Arc<str>>)>,
    pub flash_source: (Arc<str>, Arc<str>),
    pub bot_agents: Vec<Arc<str>>,
}

impl Pages {
    pub fn new() -> Self {
        let a = |s: &str| Arc::<str>::from(s);
        Pages {
            home: a("home"),
            category: a("category"),
            search: a("search"),
            product: a("product"),
            cart: a("cart"),
            checkout: a("checkout"),
            sources: vec![
                (a("https://www.google.com/"), Some(a("google"))),
                (a("https://www.google.com/"), None),
                (a("direct"), None),
                (a("https://www.facebook.com/"), Some(a("facebook"))),
                (a("https://www.instagram.com/"), Some(a("instagram"))),
                (a("https://www.bing.com/"), Some(a("bing"))),
                (a("email"), Some(a("newsletter"))),
            ],
            flash_source: (a("email"), a("flash_sale")),
            bot_agents: vec![
                a("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
                a("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"),
                a("python-requests/2.31.0"),
                a("Scrapy/2.11.2 (+https://scrapy.org)"),
            ],
        }
    }
}

impl World {
    pub fn new(cfg: SimConfig, catalog: Vec<Product>) -> Self {
        let mut by_rank = vec![0; catalog.len()];
        for (i, p) in catalog.iter().enumerate() {
            by_rank[p.popularity_rank as usize - 1] = i;
        }
        // Parameters are checked by SimConfig::validate; these fallbacks are never hit then.
        let popularity =
            WeightedIndex::new((1..=catalog.len()).map(|r| (r as f64).powf(-cfg.popularity_skew)))
                .expect(
                    "a non-empty catalog with positive weights (checked by SimConfig::validate)",
                );
        let shopper_dwell = LogNormal::new(cfg.funnel.dwell_median_secs.ln(), 0.8)
            .unwrap_or_else(|_| LogNormal::new(3.0, 0.8).expect("constant parameters"));
        World {
            cfg,
            catalog,
            by_rank,
            popularity,
            shopper_dwell,
            bot_dwell: Exp::new(1.0 / 0.8).expect("constant parameters"),
            pages: Pages::new(),
        }
    }

    /// A product index drawn by popularity.
    pub fn popular_product(&self, rng: &mut impl Rng) -> usize {
        self.by_rank[self.popularity.sample(rng)]
    }
}

/// Who is visiting and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Shopper,
    /// A crawler or scraper: many fast page views, never a cart.
    Bot {
        pages_left: u32,
    },
    /// Came for a flash-sale product; looks a lot, does not buy.
    FlashVisitor {
        products: Vec<usize>,
        views_left: u32,
    },
}

/// What the session does next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Land,
    ViewProduct,
    Category,
    Search,
    CartPage,
    AddToCart(usize),
    Checkout,
    Buy,
}

/// The visitor's fixed attributes, copied from the user (or invented for a bot).
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    pub user_id: Uuid,
    pub device: Arc<str>,
    pub country: Arc<str>,
    pub user_agent: Arc<str>,
}

/// One visit in progress.
pub(crate) struct Session {
    pub id: Uuid,
    pub visitor: Visitor,
    pub kind: Kind,
    /// Event time of the next event.
    pub next_at: EventTime,
    /// No more events after the one just returned.
    pub finished: bool,
    next: Action,
    bounce: bool,
    cart: Vec<(usize, u32)>,
    will_purchase: Option<bool>,
}

fn secs(s: f64) -> i64 {
    (s * 1_000_000.0) as i64
}

impl Session {
    pub fn new(visitor: Visitor, kind: Kind, at: EventTime, rng: &mut impl Rng, w: &World) -> Self {
        let bounce = kind == Kind::Shopper && rng.random_bool(w.cfg.funnel.bounce_rate);
        Session {
            id: uuid_from(rng),
            visitor,
            kind,
            next_at: at,
            finished: false,
            next: Action::Land,
            bounce,
            cart: Vec::new(),
            will_purchase: None,
        }
    }

    fn event(&self, rng: &mut impl Rng, ty: EventType, page: &Arc<str>) -> Event {
        let mut e = Event::new(
            uuid_from(rng),
            ty,
            self.next_at,
            self.visitor.user_id,
            self.id,
        );
        e.device = Some(self.visitor.device.clone());
        e.country = Some(self.visitor.country.clone());
        e.user_agent = Some(self.visitor.user_agent.clone());
        e.page = Some(page.clone());
        e
    }

    fn with_product(mut e: Event, p: &Product) -> Event {
        e.product_id = Some(p.product_id.clone());
        e.category = Some(p.category.clone());
        e.price = Some(p.price);
        e
    }

    /// Emits the event due at `next_at` and plans the following one. `out` receives one
    /// event, or several for a purchase (one per cart line, same order).
    pub fn step(&mut self, w: &World, rng: &mut impl Rng, out: &mut Vec<Event>) {
        match self.kind.clone() {
            Kind::Shopper => self.shopper_step(w, rng, out),
            Kind::Bot { pages_left } => {
                let e = if self.next == Action::Land || rng.random_bool(0.2) {
                    self.event(rng, EventType::PageView, &w.pages.category)
                } else {
                    let p = &w.catalog[rng.random_range(0..w.catalog.len())];
                    Self::with_product(self.event(rng, EventType::PageView, &w.pages.product), p)
                };
                out.push(e);
                self.next = Action::ViewProduct;
                if pages_left <= 1 {
                    self.finished = true;
                } else {
                    self.kind = Kind::Bot {
                        pages_left: pages_left - 1,
                    };
                    self.next_at = self.next_at.add_micros(secs(0.1 + w.bot_dwell.sample(rng)));
                }
            }
            Kind::FlashVisitor {
                products,
                views_left,
            } => {
                let pick = if rng.random_bool(0.7) {
                    products[0]
                } else {
                    products[rng.random_range(0..products.len())]
                };
                let mut e = Self::with_product(
                    self.event(rng, EventType::PageView, &w.pages.product),
                    &w.catalog[pick],
                );
                if self.next == Action::Land {
                    e.referrer = Some(w.pages.flash_source.0.clone());
                    e.utm_source = Some(w.pages.flash_source.1.clone());
                }
                out.push(e);
                self.next = Action::ViewProduct;
                if views_left <= 1 {
                    self.finished = true;
                } else {
                    self.kind = Kind::FlashVisitor {
                        products,
                        views_left: views_left - 1,
                    };
                    self.next_at = self
                        .next_at
                        .add_micros(secs(3.0 + w.shopper_dwell.sample(rng) / 2.0));
                }
            }
        }
    }

    fn shopper_step(&mut self, w: &World, rng: &mut impl Rng, out: &mut Vec<Event>) {
        let f = &w.cfg.funnel;
        let pg = &w.pages;
        let mut viewed = None;
        match self.next {
            Action::Land => {
                let r: f64 = rng.random();
                let mut e = if r < 0.35 {
                    let p = w.popular_product(rng);
                    viewed = Some(p);
                    Self::with_product(
                        self.event(rng, EventType::PageView, &pg.product),
                        &w.catalog[p],
                    )
                } else if r < 0.8 {
                    self.event(rng, EventType::PageView, &pg.home)
                } else {
                    let mut e = self.event(rng, EventType::PageView, &pg.category);
                    e.category = Some(w.catalog[w.popular_product(rng)].category.clone());
                    e
                };
                let (referrer, utm) = &pg.sources[rng.random_range(0..pg.sources.len())];
                e.referrer = Some(referrer.clone());
                e.utm_source = utm.clone();
                out.push(e);
            }
            Action::ViewProduct => {
                let p = w.popular_product(rng);
                viewed = Some(p);
                out.push(Self::with_product(
                    self.event(rng, EventType::PageView, &pg.product),
                    &w.catalog[p],
                ));
            }
            Action::Category => {
                let mut e = self.event(rng, EventType::PageView, &pg.category);
                e.category = Some(w.catalog[w.popular_product(rng)].category.clone());
                out.push(e);
            }
            Action::Search => out.push(self.event(rng, EventType::PageView, &pg.search)),
            Action::CartPage => out.push(self.event(rng, EventType::PageView, &pg.cart)),
            Action::Checkout => out.push(self.event(rng, EventType::PageView, &pg.checkout)),
            Action::AddToCart(p) => {
                let qty = match rng.random_range(0..100) {
                    0..=74 => 1,
                    75..=91 => 2,
                    _ => rng.random_range(3..=5),
                };
                let mut e = Self::with_product(
                    self.event(rng, EventType::AddToCart, &pg.product),
                    &w.catalog[p],
                );
                e.quantity = Some(qty);
                out.push(e);
                match self.cart.iter_mut().find(|(q, _)| *q == p) {
                    Some(line) => line.1 += qty,
                    None => self.cart.push((p, qty)),
                }
                if self.will_purchase.is_none() {
                    self.will_purchase = Some(rng.random_bool(f.purchase_rate));
                }
            }
            Action::Buy => {
                let order = uuid_from(rng);
                for (i, &(p, qty)) in self.cart.iter().enumerate() {
                    let mut e = Self::with_product(
                        self.event(rng, EventType::Purchase, &pg.checkout),
                        &w.catalog[p],
                    );
                    // Lines of one order are a millisecond apart so event time orders them.
                    e.timestamp = self.next_at.add_micros(i as i64 * 1000);
                    e.quantity = Some(qty);
                    e.order_id = Some(order);
                    e.amount = Some(w.catalog[p].price.times(qty));
                    out.push(e);
                }
                self.finished = true;
                return;
            }
        }
        self.plan(w, rng, viewed);
    }

    /// Decides the next action after the event just emitted.
    fn plan(&mut self, w: &World, rng: &mut impl Rng, viewed: Option<usize>) {
        let f = &w.cfg.funnel;
        let was_landing = self.next == Action::Land;
        if was_landing && self.bounce {
            self.finished = true;
            return;
        }
        let next = if self.next == Action::Checkout {
            Action::Buy
        } else if let Some(p) = viewed.filter(|_| rng.random_bool(f.cart_rate)) {
            Action::AddToCart(p)
        } else if !was_landing && rng.random_bool(f.exit_rate) {
            if self.will_purchase == Some(true) {
                Action::Checkout
            } else {
                self.finished = true;
                return;
            }
        } else {
            match rng.random_range(0..100) {
                0..=59 => Action::ViewProduct,
                60..=74 => Action::Category,
                75..=89 => Action::Search,
                _ if !self.cart.is_empty() => Action::CartPage,
                _ => Action::ViewProduct,
            }
        };
        let dwell = match next {
            Action::AddToCart(_) => w.shopper_dwell.sample(rng) / 3.0,
            _ => w.shopper_dwell.sample(rng),
        };
        self.next_at = self.next_at.add_micros(secs(dwell.min(900.0)));
        self.next = next;
    }
}
