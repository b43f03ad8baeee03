//! The web dashboard under `/ui/`: stats with a chart, links, the event log,
//! conversions, deliveries and setup, rendered by the server from the same store calls
//! the admin API makes.
//!
//! - `crate::sessions`: signed session cookies, CSRF tokens, the sign-in rate limit
//!   (outside the routes, so that the shared state can hold them).
//! - `overview`, `links`, `pages`: the pages; `chart`: the SVG chart.
//! - `templates/` (askama, checked at compile time, HTML-escaped) and `assets/` (CSS and
//!   a little JavaScript), both compiled into the binary.
//!
//! Every answer carries `Content-Security-Policy: default-src 'self'` and
//! `X-Frame-Options: DENY`; there is no inline script or style, and every page works
//! with JavaScript off (plain forms and links). Pages read only the hourly
//! pre-aggregates and bounded lists.

mod chart;
mod links;
mod overview;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;

use askama::Template;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::routes::{error, failure, Body};
use crate::sessions::{self as session, Session};
use crate::state::AppState;

const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");
const ICON: &str = include_str!("assets/icon.svg");

/// `GET /`: the dashboard, when it is on.
pub(crate) fn root(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    if !state.config.dashboard.enabled {
        return error(StatusCode::NOT_FOUND, "no such route");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return crate::routes::method_not_allowed("GET, HEAD");
    }
    redirect(StatusCode::FOUND, "/ui/")
}

/// Serves `/ui` and everything under it.
pub(crate) async fn serve(state: &AppState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if !state.config.dashboard.enabled {
        return error(StatusCode::NOT_FOUND, "no such route");
    }
    let mut res = route(state, req, peer).await;
    let headers = res.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// What a page handler gets: the state, the signed-in session and the query.
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) session: Session,
    pub(crate) query: HashMap<String, String>,
}

impl Ctx<'_> {
    pub(crate) fn q(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The frame every page shares.
    pub(crate) fn layout(&self, title: &str, nav: &'static str) -> Layout {
        let notice = pages::notice(&self.query);
        Layout { title: title.to_owned(), nav, csrf: self.session.csrf.clone(), notice, problem: None }
    }
}

async fn route(state: &AppState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/ui").unwrap_or_default();
    let method = req.method().clone();
    let read_only = method == Method::GET || method == Method::HEAD;
    match rest {
        "" => return redirect(StatusCode::FOUND, "/ui/"),
        "/assets/app.css" if read_only => return asset("text/css; charset=utf-8", CSS),
        "/assets/app.js" if read_only => return asset("text/javascript; charset=utf-8", JS),
        "/assets/icon.svg" if read_only => return asset("image/svg+xml", ICON),
        "/login" => return pages::login(state, req, peer).await,
        _ => {}
    }
    let raw_query = req.uri().query().unwrap_or_default();
    let query: HashMap<String, String> = form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
    let session = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| session::cookie_value(v, session::COOKIE))
        .and_then(|v| state.sessions.verify(v));
    let Some(session) = session else {
        return redirect(if read_only { StatusCode::FOUND } else { StatusCode::SEE_OTHER }, "/ui/login");
    };
    let ctx = Ctx { state, session, query };
    if !read_only {
        if method != Method::POST {
            return page_error(&ctx, StatusCode::METHOD_NOT_ALLOWED, "Use the page's forms.");
        }
        let form = match read_form(state, req).await {
            Ok(form) => form,
            Err(res) => return res,
        };
        let token = form.get("csrf").map(String::as_str).unwrap_or_default();
        if !state.sessions.csrf_ok(&ctx.session, token) {
            return page_error(
                &ctx,
                StatusCode::FORBIDDEN,
                "This form's security token is missing or out of date. Reload the page and try again.",
            );
        }
        return post(&ctx, rest, form).await;
    }
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        [""] => overview::overview(&ctx).await,
        ["links"] => links::list(&ctx, None).await,
        ["links", network, slug] => match (segment(network), segment(slug)) {
            (Some(n), Some(s)) => links::edit(&ctx, &n, &s).await,
            _ => not_found(&ctx),
        },
        ["events"] => pages::events(&ctx).await,
        ["clicks", id] => pages::click(&ctx, id).await,
        ["conversions"] => pages::conversions(&ctx).await,
        ["conversions.csv"] => pages::conversions_csv(&ctx).await,
        ["deliveries"] => pages::deliveries(&ctx).await,
        ["setup"] => pages::setup(&ctx).await,
        ["logout"] => pages::logout_page(&ctx),
        _ => not_found(&ctx),
    }
}

/// The state-changing requests: every one has passed the CSRF check.
async fn post(ctx: &Ctx<'_>, rest: &str, form: HashMap<String, String>) -> Response<Body> {
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["logout"] => pages::logout(ctx),
        ["links"] => links::create(ctx, &form).await,
        ["links", network, slug] => match (segment(network), segment(slug)) {
            (Some(n), Some(s)) => links::change(ctx, &n, &s, &form).await,
            _ => not_found(ctx),
        },
        ["deliveries", id, "requeue"] => match segment(id) {
            Some(id) => pages::requeue(ctx, &id).await,
            None => not_found(ctx),
        },
        _ => not_found(ctx),
    }
}

fn segment(raw: &str) -> Option<String> {
    crate::routes::path_segment(raw).ok().map(std::borrow::Cow::into_owned)
}

/// A form body, at most `server.max_body_bytes`.
// The error arm is an early answer; boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
async fn read_form(state: &AppState, req: Request<Incoming>) -> Result<HashMap<String, String>, Response<Body>> {
    let limit = state.config.server.max_body_bytes;
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, &format!("form larger than {limit} bytes")))?
        .to_bytes();
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

/// What every page's frame shows.
pub(crate) struct Layout {
    pub(crate) title: String,
    /// Which navigation entry is current.
    pub(crate) nav: &'static str,
    pub(crate) csrf: String,
    /// A success message.
    pub(crate) notice: Option<String>,
    /// A problem with the request as a whole.
    pub(crate) problem: Option<String>,
}

impl Layout {
    pub(crate) fn is(&self, nav: &str) -> bool {
        self.nav == nav
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    page: Layout,
    heading: &'a str,
    text: &'a str,
}

/// A page saying what went wrong, with `status`.
pub(crate) fn page_error(ctx: &Ctx<'_>, status: StatusCode, text: &str) -> Response<Body> {
    let heading = status.canonical_reason().unwrap_or("Error");
    let page = MessagePage { page: ctx.layout(heading, ""), heading, text };
    render(status, &page)
}

fn not_found(ctx: &Ctx<'_>) -> Response<Body> {
    page_error(ctx, StatusCode::NOT_FOUND, "There is no such page.")
}

/// `503` for a store that did not answer; the cause goes to the log.
pub(crate) fn store_down(ctx: &Ctx<'_>, e: crate::store::StoreError) -> Response<Body> {
    // The status and the log line come from the one place failures are answered; the
    // page only dresses that status in the dashboard's layout.
    let status = failure("rendering the dashboard", &e).status();
    page_error(ctx, status, "The store did not answer. Try again in a moment.")
}

/// Renders a template as an HTML answer.
pub(crate) fn render(status: StatusCode, page: &impl Template) -> Response<Body> {
    match page.render() {
        Ok(html) => {
            let mut res = Response::new(Full::new(Bytes::from(html)));
            *res.status_mut() = status;
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            res
        }
        Err(e) => {
            tracing::error!(error = %e, "dashboard template failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed")
        }
    }
}

/// A redirect to a path under `/ui/`.
pub(crate) fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    res
}

/// Query-string text of `pairs`, each value percent-encoded.
pub(crate) fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        s.append_pair(k, v);
    }
    s.finish()
}
