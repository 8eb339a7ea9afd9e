//! Enrichment at the edge: what the collector knows about an event that the browser
//! cannot be trusted to say.
//!
//! - the user agent parsed into browser, OS and device class (uap-core's regexes through
//!   the `ua-parser` crate), and bot detection (`isbot`'s maintained pattern list);
//! - the client's address, anonymised before it is written anywhere, and its country from
//!   a trusted proxy's header or a MaxMind-format database;
//! - the collector's receive time, and the device's clock skew (`sent_at` against the
//!   receive time), which corrects `timestamp` when the device's clock is off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use clickstream_model::{Event, EventTime};
use serde::Deserialize;

use crate::CollectorError;

/// Skews up to this are network latency, not a wrong clock: `timestamp` is kept as sent.
pub const SKEW_TOLERANCE_MICROS: i64 = 2_000_000;

/// Parsed user-agent facts, cached per distinct user agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Browser family and major version (`Chrome 120`).
    pub browser: Option<Arc<str>>,
    /// OS family (`Windows`, `iOS`).
    pub os: Option<Arc<str>>,
    /// `desktop`, `mobile`, `tablet` or `bot`.
    pub device: Arc<str>,
    /// A known crawler, script or headless browser.
    pub bot: bool,
}

/// The uap-core data this build embeds (see `data/README.md`).
const UAP_REGEXES: &str = include_str!("../data/uap-regexes.json");

#[derive(Deserialize)]
struct UapFile<'a> {
    #[serde(borrow)]
    user_agent_parsers: Vec<ua_parser::user_agent::Parser<'a>>,
    #[serde(borrow)]
    os_parsers: Vec<ua_parser::os::Parser<'a>>,
}

/// Most distinct user agents remembered; real traffic has a few thousand.
const AGENT_CACHE: usize = 10_000;

/// User-agent parser with a bounded cache (parsing runs hundreds of regexes; a site's
/// visitors share a few thousand user agents).
pub struct AgentParser {
    browsers: ua_parser::user_agent::Extractor<'static>,
    systems: ua_parser::os::Extractor<'static>,
    bots: isbot::Bots,
    cache: Mutex<HashMap<Box<str>, Agent>>,
}

impl AgentParser {
    /// Compiles the embedded pattern lists (about a second in a debug build).
    pub fn new() -> Result<Self, CollectorError> {
        let file: UapFile<'static> = serde_json::from_str(UAP_REGEXES)
            .map_err(|e| CollectorError::Config(format!("embedded uap regexes: {e}")))?;
        let build = |e: &dyn std::fmt::Display| CollectorError::Config(format!("uap regexes: {e}"));
        let browsers = file
            .user_agent_parsers
            .into_iter()
            .try_fold(ua_parser::user_agent::Builder::new(), |b, p| b.push(p))
            .map_err(|e| build(&e))?
            .build()
            .map_err(|e| build(&e))?;
        let systems = file
            .os_parsers
            .into_iter()
            .try_fold(ua_parser::os::Builder::new(), |b, p| b.push(p))
            .map_err(|e| build(&e))?
            .build()
            .map_err(|e| build(&e))?;
        Ok(AgentParser {
            browsers,
            systems,
            bots: isbot::Bots::default(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// What `ua` says about the client.
    pub fn parse(&self, ua: &str) -> Agent {
        if let Some(a) = self.cache.lock().ok().and_then(|c| c.get(ua).cloned()) {
            return a;
        }
        let agent = self.parse_uncached(ua);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= AGENT_CACHE {
                c.clear();
            }
            c.insert(ua.into(), agent.clone());
        }
        agent
    }

    fn parse_uncached(&self, ua: &str) -> Agent {
        let browser = self.browsers.extract(ua).filter(|b| b.family != "Other");
        let os = self.systems.extract(ua).filter(|o| o.os != "Other");
        let family = browser.as_ref().map(|b| b.family.to_string());
        let bot = self.bots.is_bot(ua)
            || family
                .as_deref()
                .is_some_and(|f| f.contains("Spider") || f.contains("Headless"));
        let os_name = os.as_ref().map(|o| o.os.to_string());
        let device = device_class(ua, os_name.as_deref(), bot);
        Agent {
            browser: browser.map(|b| {
                match b.major {
                    Some(m) => format!("{} {m}", b.family),
                    None => b.family.to_string(),
                }
                .chars()
                .take(64)
                .collect::<String>()
                .into()
            }),
            os: os_name.map(|o| o.chars().take(64).collect::<String>().into()),
            device: device.into(),
            bot,
        }
    }
}

/// Device class from the OS and the conventional tokens: uap-core names devices (brand,
/// model) but has no class. Tablets: iPads, and Android without the `Mobile` token (the
/// convention Android browsers follow).
fn device_class(ua: &str, os: Option<&str>, bot: bool) -> &'static str {
    if bot {
        return "bot";
    }
    let has = |t: &str| ua.contains(t);
    match os {
        _ if has("iPad") || has("Tablet") => "tablet",
        Some("Android") if !has("Mobile") => "tablet",
        Some("iOS" | "Android" | "Windows Phone" | "BlackBerry OS" | "KaiOS") => "mobile",
        _ if has("Mobile") => "mobile",
        _ => "desktop",
    }
}

/// The address with its host part zeroed: IPv4 keeps 24 bits, IPv6 keeps 48 (the usual
/// anonymisation of analytics tools; enough for a country, not for a household).
pub fn anonymise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => anonymise(IpAddr::V4(v4)),
            None => {
                let mut o = v6.octets();
                o[6..].fill(0);
                IpAddr::from(o)
            }
        },
    }
}

/// Country lookups in a MaxMind-format database (GeoLite2 / GeoIP2 Country or City, or
/// any DB-IP / IPinfo file in the same format).
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Deserialize)]
struct GeoRecord<'a> {
    #[serde(borrow)]
    country: Option<GeoCountry<'a>>,
}

#[derive(Deserialize)]
struct GeoCountry<'a> {
    iso_code: Option<&'a str>,
}

impl GeoIp {
    /// Opens a database file.
    pub fn open(path: &Path) -> Result<Self, CollectorError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| {
            CollectorError::Config(format!(
                "cannot open GeoIP database {}: {e}",
                path.display()
            ))
        })?;
        Ok(GeoIp { reader })
    }

    /// ISO 3166-1 alpha-2 code of `ip`'s country, if the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let rec: GeoRecord<'_> = self.reader.lookup(ip).ok()??;
        let code = rec.country?.iso_code?;
        valid_country(code).then(|| code.to_ascii_uppercase())
    }
}

/// Two ASCII letters (proxies send `XX` / `T1` for unknown or Tor; those are dropped).
pub fn valid_country(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) && code != "XX"
}

/// What the collector knows about the request an event came in.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// The client's address (after trusted-proxy resolution), not yet anonymised.
    pub ip: Option<IpAddr>,
    /// The request's `User-Agent`.
    pub user_agent: Option<String>,
    /// Country from a trusted proxy's header.
    pub country: Option<String>,
    /// When the request arrived.
    pub received_at: EventTime,
}

/// Everything enrichment needs, built once at start.
pub struct Enricher {
    /// User-agent parsing and bot detection.
    pub agents: AgentParser,
    /// Optional country database.
    pub geoip: Option<GeoIp>,
}

impl Enricher {
    /// Adds the collector's fields to `e`. The event's own `user_agent` / `country` win
    /// over the request's (a server-side sender reports its visitor's, not its own).
    /// Returns the correction applied to `timestamp` in µs (0 if none).
    pub fn enrich(&self, e: &mut Event, req: &RequestFacts) -> i64 {
        // These fields are the collector's to say, never the sender's.
        e.browser = None;
        e.os = None;
        e.bot = None;
        e.client_timestamp = None;
        if e.user_agent.is_none() {
            e.user_agent = req.user_agent.as_deref().and_then(clean_agent);
        }
        if let Some(ua) = e.user_agent.as_deref() {
            let a = self.agents.parse(ua);
            e.browser = a.browser;
            e.os = a.os;
            e.bot = Some(a.bot);
            if e.device.is_none() {
                e.device = Some(a.device);
            }
        }
        if e.country.is_none() {
            e.country = req
                .country
                .clone()
                .or_else(|| {
                    let ip = req.ip?;
                    self.geoip.as_ref()?.country(ip)
                })
                .map(Into::into);
        }
        e.ip = req.ip.map(|ip| anonymise(ip).to_string().into());
        e.received_at = Some(req.received_at);
        correct_clock(e, req.received_at)
    }
}

/// `timestamp` corrected by the device's clock skew (receive time minus `sent_at`), the
/// way Snowplow derives its `derived_tstamp`: the interval between creating and sending
/// an event is measured on one clock, so it is right even when that clock is not. The
/// device's own reading moves to `client_timestamp` (it stays the dedup identity).
pub fn correct_clock(e: &mut Event, received_at: EventTime) -> i64 {
    let Some(sent) = e.sent_at else { return 0 };
    let skew = received_at.as_micros() - sent.as_micros();
    if skew.abs() <= SKEW_TOLERANCE_MICROS {
        return 0;
    }
    let original = e.client_timestamp.unwrap_or(e.timestamp);
    e.client_timestamp = Some(original);
    e.timestamp = EventTime::from_micros(original.as_micros().saturating_add(skew));
    skew
}

/// A `User-Agent` header as a contract text field: control characters dropped, at most
/// 512 characters.
fn clean_agent(ua: &str) -> Option<Arc<str>> {
    let s: String = ua
        .chars()
        .filter(|c| !c.is_control())
        .take(clickstream_model::validate::MAX_LONG_FIELD)
        .collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.into())
}

#[cfg(test)]
mod tests;
