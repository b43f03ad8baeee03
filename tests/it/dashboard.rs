//! The dashboard over plain HTTP: headers on every answer, the session cookie, the
//! sign-in limit, CSRF refusals, the dashboard switched off, and the CSV being the API's.
//! What a person sees in a browser is in `browser.rs`.

use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::StatusCode;

use crate::helpers::{spawn_app, spawn_app_edited, spawn_app_with, today, Backend, TestApp, ADMIN_TOKEN};

/// Signs in with the admin token; returns the `Cookie` header value.
pub async fn sign_in(app: &TestApp) -> String {
    let res = app.client.post(format!("{}/ui/login", app.base)).form(&[("token", ADMIN_TOKEN)]).send().await;
    let res = res.expect("sign in");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(res.headers());
    cookie.split(';').next().expect("name=value").to_owned()
}

fn set_cookie(headers: &HeaderMap) -> String {
    headers.get(SET_COOKIE).expect("a Set-Cookie header").to_str().expect("ascii").to_owned()
}

/// `GET` a dashboard path with a cookie.
async fn get(app: &TestApp, path: &str, cookie: &str) -> reqwest::Response {
    app.client.get(format!("{}{path}", app.base)).header("cookie", cookie).send().await.expect("request")
}

/// The CSRF token in a page's forms.
fn csrf_in(html: &str) -> String {
    let start = html.find(r#"name="csrf" value=""#).expect("a form with a CSRF token") + 19;
    html[start..].split('"').next().expect("token").to_owned()
}

fn assert_secure_headers(res: &reqwest::Response, what: &str) {
    let h = res.headers();
    let csp = h.get("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP")).to_str().expect("ascii");
    assert!(csp.starts_with("default-src 'self'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(h.get("x-frame-options").map(|v| v.to_str().expect("ascii")), Some("DENY"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers_and_the_cookie_its_attributes() {
    let app = spawn_app(Backend::Embedded).await;
    // `/` sends people to the dashboard.
    let res = app.get("/").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(crate::helpers::location(&res), "/ui/");

    // Without a session every page sends to the sign-in form, and a POST is not served.
    for path in ["/ui/", "/ui/links", "/ui/events", "/ui/conversions", "/ui/deliveries", "/ui/setup", "/ui/nope"] {
        let res = app.get(path).await;
        assert_eq!(res.status(), StatusCode::FOUND, "{path}");
        assert_eq!(crate::helpers::location(&res), "/ui/login", "{path}");
        assert_secure_headers(&res, path);
    }
    let res = app.client.post(format!("{}/ui/links", app.base)).form(&[("slug", "x")]).send().await.expect("post");
    assert_eq!((res.status(), crate::helpers::location(&res)), (StatusCode::SEE_OTHER, "/ui/login".to_owned()));
    let forged = "cakelink_session=9999999999.00000000000000000000000000000000.00";
    assert_eq!(get(&app, "/ui/", forged).await.status(), StatusCode::FOUND);

    let res = app.get("/ui/login").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_secure_headers(&res, "login");
    for asset in ["/ui/assets/app.css", "/ui/assets/app.js"] {
        let res = app.get(asset).await;
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
        assert_secure_headers(&res, asset);
    }

    let res = app.client.post(format!("{}/ui/login", app.base)).form(&[("token", ADMIN_TOKEN)]).send().await;
    let res = res.expect("sign in");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(res.headers());
    let attributes: Vec<&str> = cookie.split("; ").collect();
    assert!(attributes[0].starts_with("cakelink_session="), "{cookie}");
    for a in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(attributes.contains(&a), "{a} missing in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "not over plain HTTP: {cookie}");
    let cookie = attributes[0];
    for path in
        ["/ui/", "/ui/links", "/ui/events", "/ui/conversions", "/ui/deliveries", "/ui/setup", "/ui/links/cake/demo"]
    {
        let res = get(&app, path, cookie).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_secure_headers(&res, path);
        assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    }
    assert_eq!(get(&app, "/ui/nope", cookie).await.status(), StatusCode::NOT_FOUND);
    // Bad input is a clear 4xx.
    for path in ["/ui/?range=year", "/ui/?range=custom&from=2026-13-01&to=2026-01-01", "/ui/?tz=EST", "/ui/?sort=x"] {
        assert_eq!(get(&app, path, cookie).await.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(get(&app, "/ui/events?status=bogus", cookie).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(get(&app, "/ui/clicks/not-a-click", cookie).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/ui/links/cake/%ZZ", cookie).await.status(), StatusCode::NOT_FOUND);

    // Signing out ends the session: the same cookie no longer opens a page.
    let csrf = csrf_in(&get(&app, "/ui/", cookie).await.text().await.expect("page"));
    let res = app.client.post(format!("{}/ui/logout", app.base)).header("cookie", cookie).form(&[("csrf", csrf)]);
    let res = res.send().await.expect("sign out");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(res.headers()).contains("Max-Age=0"));
    assert_eq!(get(&app, "/ui/", cookie).await.status(), StatusCode::FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_hours_set_the_cookie_lifetime() {
    let app = spawn_app_with(Backend::Embedded, "", "\n[dashboard]\nsession_hours = 2\n").await;
    let res = app.client.post(format!("{}/ui/login", app.base)).form(&[("token", ADMIN_TOKEN)]).send().await;
    assert!(set_cookie(res.expect("sign in").headers()).contains("Max-Age=7200"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_the_dashboard_is_not_there() {
    let app = spawn_app_with(Backend::Embedded, "", "\n[dashboard]\nenabled = false\n").await;
    for path in ["/ui/", "/ui/login", "/ui/assets/app.css", "/ui", "/"] {
        assert_eq!(app.get(path).await.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // The rest of the service is unchanged.
    assert_eq!(app.get("/go/cake/demo").await.status(), StatusCode::FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_failed_sign_ins_a_minute_get_429() {
    let app = spawn_app(Backend::Embedded).await;
    let try_token = |token: &'static str| {
        let app = &app;
        async move {
            let res = app.client.post(format!("{}/ui/login", app.base)).form(&[("token", token)]).send().await;
            let res = res.expect("sign in");
            let status = res.status();
            (status, res.text().await.expect("body"))
        }
    };
    for i in 0..10 {
        let (status, body) = try_token("wrong-token").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {i}");
        assert!(body.contains("That is not the admin token."), "the form again, with its error");
        assert!(body.contains(r#"name="token""#));
    }
    let (status, body) = try_token("wrong-token").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("failed sign-ins"), "{body}");
    // Even the right token waits: guessing must not go on behind the 429.
    assert_eq!(try_token(ADMIN_TOKEN).await.0, StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_its_sessions_csrf_token_is_refused() {
    let app = spawn_app(Backend::Embedded).await;
    let cookie = sign_in(&app).await;
    let other = sign_in(&app).await;
    let other_token = csrf_in(&get(&app, "/ui/links", &other).await.text().await.expect("page"));
    let token = csrf_in(&get(&app, "/ui/links", &cookie).await.text().await.expect("page"));
    let create = |csrf: Option<String>, slug: &'static str| {
        let (app, cookie) = (&app, &cookie);
        async move {
            let mut form = vec![("slug", slug.to_owned()), ("offer", "https://o.example.com/?a=1".to_owned())];
            form.extend([("network", "cake".to_owned()), ("redirect", "302".to_owned())]);
            form.extend(csrf.map(|c| ("csrf", c)));
            let res = app.client.post(format!("{}/ui/links", app.base)).header("cookie", cookie.as_str()).form(&form);
            res.send().await.expect("post")
        }
    };
    for (what, csrf) in [("none", None), ("another session's", Some(other_token)), ("junk", Some("00".into()))] {
        let res = create(csrf, "csrf-refused").await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{what}");
        assert!(res.text().await.expect("page").contains("security token"), "{what}");
    }
    let res = app.client.get(format!("{}/api/links/cake/csrf-refused", app.base)).bearer_auth(ADMIN_TOKEN).send();
    assert_eq!(res.await.expect("api").status(), StatusCode::NOT_FOUND, "nothing was created");
    let res = create(Some(token), "csrf-accepted").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(crate::helpers::location(&res), "/ui/links?created=cake%2Fcsrf-accepted");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_download_is_the_apis_file() {
    let app = spawn_app(Backend::Embedded).await;
    let click = app.click("demo").await;
    let (_, body) = app.postback(&format!("s2={click}&tid=csv1&price=7.25")).await;
    assert_eq!(body["status"], "ok");
    let cookie = sign_in(&app).await;
    let day = today();
    let ui = get(&app, &format!("/ui/conversions.csv?range=custom&from={day}&to={day}"), &cookie).await;
    assert_eq!(ui.status(), StatusCode::OK);
    assert_eq!(ui.headers()["content-disposition"], "attachment; filename=\"conversions.csv\"");
    let api = app.client.get(format!("{}/api/conversions?from={day}&to={day}&format=csv", app.base));
    let api = api.bearer_auth(ADMIN_TOKEN).send().await.expect("api").text().await.expect("csv");
    let ui = ui.text().await.expect("csv");
    assert_eq!(ui, api);
    assert!(ui.contains(&click) && ui.contains("7.25"), "{ui}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_under_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let made = rcgen::generate_simple_self_signed(vec!["cakelink.test".to_owned()]).expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write");
    let lines = format!("tls_cert = {:?}\ntls_key = {:?}\n", cert.display().to_string(), key.display().to_string());
    let app = spawn_app_edited(Backend::Embedded, |text| text.replace("[store]", &format!("{lines}[store]"))).await;
    let root = reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).expect("PEM");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("cakelink.test", app.addr)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = format!("https://cakelink.test:{}/ui/login", app.addr.port());
    let res = client.post(url).form(&[("token", ADMIN_TOKEN)]).send().await.expect("sign in");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(res.headers());
    assert!(cookie.split("; ").any(|a| a == "Secure"), "{cookie}");
    app.stop().await;
}

/// A link with offers shows them on its page: each offer's share of the traffic, its
/// daily cap, its status, and today's clicks counted by offer, as the reports count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_page_shows_its_offers_with_todays_clicks() {
    let split = r#"
[[links]]
slug = "split"
offer = "https://offers.example.com/?a=200&c=10"
  [[links.offers]]
  id = "first"
  url = "https://offers.example.com/?a=200&c=11"
  weight = 3
  daily_cap = 500
  [[links.offers]]
  id = "second"
  url = "https://offers.example.com/?a=200&c=12"
  weight = 1
  status = "paused"
"#;
    let app = spawn_app_with(Backend::Embedded, "", split).await;
    // The paused offer takes nothing: every click goes to the first.
    for _ in 0..3 {
        app.click("split").await;
    }
    let cookie = sign_in(&app).await;
    let res = get(&app, "/ui/links/cake/split", &cookie).await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.expect("page");
    let row = |id: &str| {
        let start = html.find(&format!("data-offer=\"{id}\"")).unwrap_or_else(|| panic!("no row for {id}: {html}"));
        let end = html[start..].find("</tr>").map_or(html.len(), |e| start + e);
        html[start..end].to_owned()
    };
    let first = row("first");
    for text in ["75%", "500 a day", "active", ">3<"] {
        assert!(first.contains(text), "{text} missing in {first}");
    }
    let second = row("second");
    for text in ["25%", "none", "paused", ">0<"] {
        assert!(second.contains(text), "{text} missing in {second}");
    }
    // A link without offers has no offers table.
    let plain = get(&app, "/ui/links/cake/demo", &cookie).await.text().await.expect("page");
    assert!(!plain.contains("data-offer="), "{plain}");
    app.stop().await;
}
