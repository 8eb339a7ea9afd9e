use std::net::IpAddr;

use clickstream_model::{Event, EventTime, EventType};
use uuid::Uuid;

use super::*;

/// Real user agents, and what a shop's analyst expects to see for each.
/// (user agent, browser, os, device, bot)
type AgentCase = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    bool,
);

const AGENTS: &[AgentCase] = &[
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        Some("Chrome 120"), Some("Windows"), "desktop", false,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
        Some("Edge 120"), Some("Windows"), "desktop", false,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        Some("Firefox 128"), Some("Linux"), "desktop", false,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
        Some("Safari 17"), Some("Mac OS X"), "desktop", false,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
        Some("Mobile Safari 17"), Some("iOS"), "mobile", false,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
        Some("Mobile Safari 16"), Some("iOS"), "tablet", false,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
        Some("Chrome Mobile 120"), Some("Android"), "mobile", false,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        Some("Chrome 120"), Some("Android"), "tablet", false,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
        Some("Samsung Internet 23"), Some("Android"), "mobile", false,
    ),
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        Some("Googlebot 2"), None, "bot", true,
    ),
    (
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
        Some("bingbot 2"), None, "bot", true,
    ),
    (
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
        Some("GPTBot 1"), None, "bot", true,
    ),
    (
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        Some("FacebookBot 1"), None, "bot", true,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.109 Safari/537.36",
        Some("HeadlessChrome 120"), Some("Linux"), "bot", true,
    ),
    ("curl/8.5.0", Some("curl 8"), None, "bot", true),
    ("python-requests/2.31.0", Some("Python Requests 2"), None, "bot", true),
];

#[test]
fn real_user_agents_parse_as_expected() {
    let p = AgentParser::new().unwrap();
    let mut wrong = Vec::new();
    for &(ua, browser, os, device, bot) in AGENTS {
        let got = p.parse(ua);
        let want = Agent {
            browser: browser.map(Into::into),
            os: os.map(Into::into),
            device: device.into(),
            bot,
        };
        if got != want {
            wrong.push(format!("{ua}\n   got  {got:?}\n   want {want:?}"));
        }
        assert_eq!(p.parse(ua), got, "cached answer differs");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn addresses_lose_their_host_part() {
    let cases = [
        ("203.0.113.77", "203.0.113.0"),
        ("10.1.2.3", "10.1.2.0"),
        ("2001:db8:85a3:1234:5678:8a2e:370:7334", "2001:db8:85a3::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),
        ("::1", "::"),
    ];
    for (ip, want) in cases {
        let got = anonymise(ip.parse::<IpAddr>().unwrap());
        assert_eq!(got.to_string(), want, "{ip}");
    }
}

#[test]
fn countries_must_be_two_letters() {
    assert!(valid_country("DE"));
    assert!(valid_country("fr"));
    for bad in ["XX", "", "D", "DEU", "1A", "T1"] {
        assert!(!valid_country(bad), "{bad}");
    }
}

fn event(ts: &str, sent: Option<&str>) -> Event {
    let mut e = Event::new(
        Uuid::from_u128(1),
        EventType::PageView,
        EventTime::parse_rfc3339(ts).unwrap(),
        Uuid::from_u128(2),
        Uuid::from_u128(3),
    );
    e.sent_at = sent.map(|s| EventTime::parse_rfc3339(s).unwrap());
    e
}

#[test]
fn a_wrong_device_clock_is_corrected_and_kept_as_the_identity() {
    let received = EventTime::parse_rfc3339("2026-01-01T12:00:00Z").unwrap();
    // Device clock 2 hours behind: created 30 s before it sent, by its own clock.
    let mut e = event("2026-01-01T09:59:30Z", Some("2026-01-01T10:00:00Z"));
    let skew = correct_clock(&mut e, received);
    assert_eq!(skew, 2 * 3_600_000_000);
    assert_eq!(e.timestamp.to_string(), "2026-01-01T11:59:30.000Z");
    assert_eq!(
        e.client_timestamp.unwrap().to_string(),
        "2026-01-01T09:59:30.000Z"
    );
    let key = e.key();
    // A retry sent later (another skew estimate) keeps the same identity.
    let mut retry = event("2026-01-01T09:59:30Z", Some("2026-01-01T10:05:00Z"));
    correct_clock(
        &mut retry,
        EventTime::parse_rfc3339("2026-01-01T12:05:00.3Z").unwrap(),
    );
    assert_eq!(retry.key(), key);
    assert_ne!(retry.timestamp, e.timestamp);

    // A right clock (latency only) and no sent_at: untouched.
    for mut e in [
        event("2026-01-01T11:59:59Z", Some("2026-01-01T11:59:59.5Z")),
        event("2026-01-01T11:00:00Z", None),
    ] {
        let before = e.clone();
        assert_eq!(correct_clock(&mut e, received), 0);
        assert_eq!(e, before);
    }
}

#[test]
fn enrichment_prefers_the_events_own_context() {
    let en = Enricher {
        agents: AgentParser::new().unwrap(),
        geoip: None,
    };
    let req = RequestFacts {
        ip: Some("198.51.100.23".parse().unwrap()),
        user_agent: Some(AGENTS[0].0.to_string()),
        country: Some("NL".into()),
        received_at: EventTime::parse_rfc3339("2026-01-01T12:00:00Z").unwrap(),
    };
    let mut e = event("2026-01-01T11:59:00Z", None);
    en.enrich(&mut e, &req);
    assert_eq!(e.browser.as_deref(), Some("Chrome 120"));
    assert_eq!(e.device.as_deref(), Some("desktop"));
    assert_eq!(e.bot, Some(false));
    assert_eq!(e.country.as_deref(), Some("NL"));
    assert_eq!(e.ip.as_deref(), Some("198.51.100.0"));
    assert_eq!(e.received_at, Some(req.received_at));

    let mut e = event("2026-01-01T11:59:00Z", None);
    e.user_agent = Some("Googlebot/2.1 (+http://www.google.com/bot.html)".into());
    e.country = Some("JP".into());
    e.device = Some("mobile".into());
    en.enrich(&mut e, &req);
    assert_eq!(e.bot, Some(true));
    assert_eq!(e.country.as_deref(), Some("JP"));
    assert_eq!(e.device.as_deref(), Some("mobile"));
    assert!(e.is_bot());
}

fn test_geoip() -> GeoIp {
    GeoIp::open(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/GeoLite2-Country-Test.mmdb"),
    )
    .unwrap()
}

#[test]
fn a_maxmind_database_gives_the_country() {
    let db = test_geoip();
    for (ip, want) in [
        ("81.2.69.142", Some("GB")),
        ("89.160.20.130", Some("SE")),
        ("216.160.83.57", Some("US")),
        ("2001:218::1", Some("JP")),
        ("10.1.2.3", None),
        ("127.0.0.1", None),
    ] {
        assert_eq!(db.country(ip.parse().unwrap()).as_deref(), want, "{ip}");
    }
    assert!(GeoIp::open(std::path::Path::new("/nonexistent.mmdb")).is_err());

    // Looked up on the full address, before it is anonymised.
    let en = Enricher {
        agents: AgentParser::new().unwrap(),
        geoip: Some(db),
    };
    let mut e = event("2026-01-01T11:59:00Z", None);
    let req = RequestFacts {
        ip: Some("81.2.69.143".parse().unwrap()),
        user_agent: None,
        country: None,
        received_at: EventTime::parse_rfc3339("2026-01-01T12:00:00Z").unwrap(),
    };
    en.enrich(&mut e, &req);
    assert_eq!(e.country.as_deref(), Some("GB"));
    assert_eq!(e.ip.as_deref(), Some("81.2.69.0"));
    assert_eq!(e.browser, None);
}
