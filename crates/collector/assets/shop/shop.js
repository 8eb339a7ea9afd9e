// The demo shop's pages: catalog, product, cart, checkout. The cart lives in localStorage;
// money is handled in cents, as the pipeline does. Events go through window.clickstream.
(function () {
  "use strict";
  var CART = "shop_cart";
  var main = document.getElementById("main");

  function money(cents) { return (cents / 100).toFixed(2); }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function cart() { try { return JSON.parse(localStorage.getItem(CART) || "{}"); } catch (e) { return {}; } }
  function saveCart(c) { localStorage.setItem(CART, JSON.stringify(c)); count(); }
  function count() {
    var c = cart(), n = 0;
    for (var k in c) n += c[k];
    document.querySelector("[data-testid=cart-count]").textContent = n;
  }
  function products() {
    return fetch("/shop/api/products").then(function (r) {
      if (!r.ok) throw new Error("catalog unavailable (" + r.status + ")");
      return r.json();
    });
  }
  function fields(p) { return { product_id: p.product_id, category: p.category, price: p.price_cents / 100 }; }

  var views = {
    home: function (all) {
      main.innerHTML = "<h1>Catalog</h1><div class=grid>" + all.map(function (p) {
        return "<div class=card><a data-testid=product-link data-product='" + esc(p.product_id) +
          "' href='/shop/product.html?id=" + encodeURIComponent(p.product_id) + "'><strong>" + esc(p.name) +
          "</strong><div class=muted>" + esc(p.category) + "</div><div class=price>" + money(p.price_cents) +
          "</div></a></div>";
      }).join("") + "</div>";
    },
    product: function (all) {
      var id = new URLSearchParams(location.search).get("id");
      var p = all.filter(function (x) { return x.product_id === id; })[0];
      if (!p) { main.innerHTML = "<p>No such product.</p>"; clickstream.page({ page: "product" }); return; }
      var f = fields(p);
      f.page = "product";
      clickstream.page(f);
      main.innerHTML = "<div class=card><h1 data-testid=product-name>" + esc(p.name) + "</h1><p class=muted>" +
        esc(p.category) + "</p><p class=price data-testid=product-price>" + money(p.price_cents) + "</p>" +
        "<label>Quantity <input data-testid=qty type=number min=1 max=20 value=1></label> " +
        "<button data-testid=add-to-cart>Add to cart</button> <span data-testid=added class=muted></span></div>";
      main.querySelector("[data-testid=add-to-cart]").onclick = function () {
        var q = Math.max(1, Math.min(20, parseInt(main.querySelector("[data-testid=qty]").value, 10) || 1));
        var c = cart();
        c[p.product_id] = (c[p.product_id] || 0) + q;
        saveCart(c);
        var e = fields(p);
        e.quantity = q;
        e.page = "product";
        clickstream.track("add_to_cart", e);
        main.querySelector("[data-testid=added]").textContent = "Added " + q + ".";
      };
    },
    cart: function (all) {
      var lines = linesOf(all);
      if (!lines.length) { main.innerHTML = "<h1>Cart</h1><p>Your cart is empty.</p>"; return; }
      main.innerHTML = "<h1>Cart</h1>" + table(lines) + "<p><a href='/shop/checkout.html' data-testid=checkout-link>Checkout</a></p>";
    },
    checkout: function (all) {
      var lines = linesOf(all);
      if (!lines.length) { main.innerHTML = "<h1>Checkout</h1><p>Your cart is empty.</p>"; return; }
      main.innerHTML = "<h1>Checkout</h1>" + table(lines) + "<button data-testid=place-order>Place order</button>";
      main.querySelector("[data-testid=place-order]").onclick = function () {
        var order = (crypto.randomUUID && crypto.randomUUID()) || null;
        lines.forEach(function (l) {
          var e = fields(l.p);
          e.quantity = l.q;
          e.order_id = order;
          e.amount = (l.p.price_cents * l.q) / 100;
          e.page = "checkout";
          clickstream.track("purchase", e);
        });
        saveCart({});
        clickstream.flush();
        main.innerHTML = "<h1>Thank you</h1><p>Order <code data-testid=order-id>" + esc(order) + "</code> is placed.</p>" +
          "<p><a href='/shop/'>Back to the shop</a></p>";
      };
    }
  };

  function linesOf(all) {
    var c = cart();
    return all.filter(function (p) { return c[p.product_id]; })
      .map(function (p) { return { p: p, q: c[p.product_id] }; });
  }
  function table(lines) {
    var total = 0;
    var rows = lines.map(function (l) {
      total += l.p.price_cents * l.q;
      return "<tr data-testid=cart-line><td>" + esc(l.p.name) + "</td><td>" + l.q + "</td><td>" + money(l.p.price_cents * l.q) + "</td></tr>";
    }).join("");
    return "<table><tr><th>Product</th><th>Qty</th><th>Amount</th></tr>" + rows +
      "<tr><th colspan=2>Total</th><th data-testid=cart-total>" + money(total) + "</th></tr></table>";
  }

  count();
  products().then(function (all) { views[document.body.dataset.view](all); }, function (e) {
    main.innerHTML = "<p>" + esc(e.message) + "</p>";
  });
})();
