//! The links page: every link with its tracking URL and today's clicks, and the forms
//! that create, edit, pause and delete API links through the admin API's own checks.

use std::collections::HashMap;

use askama::Template;
use hyper::{Response, StatusCode};

use super::pages::path_enc;
use super::{page_error, query_string, redirect, render, store_down, Ctx, Layout};
use crate::links::REDIRECT_CODES;
use crate::model::{Link, LinkSource, LinkStatus};
use crate::reports::{self, Group, Period};
use crate::routes::api::{all_links, remove_link, save_link, LinkChangeError, READ_ONLY};
use crate::routes::Body;

pub(crate) struct LinkRow {
    pub(crate) key: String,
    /// The element id of its tracking-URL field.
    pub(crate) copy_id: String,
    pub(crate) edit: String,
    pub(crate) action: String,
    pub(crate) active: bool,
    pub(crate) read_only: bool,
    pub(crate) offer_host: String,
    pub(crate) tracking_url: String,
    pub(crate) clicks_today: u64,
}

/// A link form's values as typed, and a problem per field.
#[derive(Default)]
pub(crate) struct LinkForm {
    pub(crate) network: String,
    pub(crate) slug: String,
    pub(crate) offer: String,
    pub(crate) redirect: String,
    pub(crate) status: String,
    pub(crate) fallback: String,
    pub(crate) event: String,
    pub(crate) errors: HashMap<String, String>,
}

impl LinkForm {
    fn blank() -> LinkForm {
        LinkForm { network: "cake".into(), redirect: "302".into(), status: "active".into(), ..LinkForm::default() }
    }

    fn of(link: &Link) -> LinkForm {
        LinkForm {
            network: link.network.clone(),
            slug: link.slug.clone(),
            offer: link.offer.clone(),
            redirect: link.redirect.to_string(),
            status: if link.status == LinkStatus::Paused { "paused" } else { "active" }.into(),
            fallback: link.fallback.clone().unwrap_or_default(),
            event: link.event.clone().unwrap_or_default(),
            errors: HashMap::new(),
        }
    }

    fn read(form: &HashMap<String, String>) -> LinkForm {
        let get = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        LinkForm {
            network: get("network"),
            slug: get("slug"),
            offer: get("offer"),
            redirect: get("redirect"),
            status: get("status"),
            fallback: get("fallback"),
            event: get("event"),
            errors: HashMap::new(),
        }
    }

    /// The problem with `field`, if any (for the template).
    pub(crate) fn error(&self, field: &str) -> Option<&str> {
        self.errors.get(field).map(String::as_str)
    }

    /// The link the form describes, or the form with its errors filled in.
    fn check(&mut self) -> Option<Link> {
        let redirect = match self.redirect.parse::<u16>() {
            Ok(code) => code,
            Err(_) => {
                self.errors.insert(
                    "redirect".to_owned(),
                    format!("{:?} is not one of 301, 302, 303, 307, 308", self.redirect),
                );
                0
            }
        };
        let status = match self.status.as_str() {
            "active" | "" => LinkStatus::Active,
            "paused" => LinkStatus::Paused,
            other => {
                self.errors.insert("status".to_owned(), format!("{other:?}: use active or paused"));
                LinkStatus::Active
            }
        };
        let optional = |v: &str| Some(v.to_owned()).filter(|v| !v.is_empty());
        let link = Link {
            network: self.network.clone(),
            slug: self.slug.clone(),
            offer: self.offer.clone(),
            redirect,
            status,
            fallback: optional(&self.fallback),
            event: optional(&self.event),
            source: LinkSource::Api,
            // The form edits a link's own fields; its offers and rules are kept (see
            // `change`) and are edited through the API or the config file.
            offers: Vec::new(),
            rules: Vec::new(),
            sticky_hours: 0,
            cap_tz: None,
        };
        self.errors.is_empty().then_some(link)
    }
}

#[derive(Template)]
#[template(path = "links.html")]
struct LinksPage {
    page: Layout,
    rows: Vec<LinkRow>,
    form: LinkForm,
    networks: Vec<String>,
    redirects: Vec<u16>,
}

/// The tracking URL of a link: what goes into the ads.
pub(crate) fn tracking_url(public_url: &str, link: &Link) -> String {
    format!("{}/go/{}/{}", public_url.trim_end_matches('/'), link.network, link.slug)
}

/// `/ui/links`: every link and the form to create one (with `form` after a failed try).
pub(crate) async fn list(ctx: &Ctx<'_>, form: Option<LinkForm>) -> Response<Body> {
    let links = match all_links(ctx.state).await {
        Ok(l) => l,
        Err(e) => return store_down(ctx, e),
    };
    // Today's clicks (UTC), from the same counters as the reports.
    let today = time::OffsetDateTime::now_utc().date();
    let period = Period { from: today, to: today, offset: time::UtcOffset::UTC };
    let (first, last) = period.hours();
    let clicks: HashMap<String, u64> = match ctx.state.store.conversions().counters(first, last).await {
        Ok(hours) => reports::aggregate(&period, Group::Link, &hours).into_iter().map(|r| (r.key, r.clicks)).collect(),
        Err(e) => return store_down(ctx, e),
    };
    let public_url = &ctx.state.config.server.public_url;
    let rows = links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let key = l.key();
            let path = format!("/ui/links/{}/{}", path_enc(&l.network), path_enc(&l.slug));
            LinkRow {
                clicks_today: clicks.get(&key).copied().unwrap_or(0),
                edit: path.clone(),
                action: path,
                active: l.status == LinkStatus::Active,
                read_only: l.source == LinkSource::Config,
                offer_host: url::Url::parse(&l.offer)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default(),
                tracking_url: tracking_url(public_url, l),
                copy_id: format!("url-{i}"),
                key,
            }
        })
        .collect();
    let status = if form.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let page = LinksPage {
        page: ctx.layout("Links", "links"),
        rows,
        form: form.unwrap_or_else(LinkForm::blank),
        networks: ctx.state.links.networks().keys().cloned().collect(),
        redirects: REDIRECT_CODES.to_vec(),
    };
    render(status, &page)
}

#[derive(Template)]
#[template(path = "link_edit.html")]
struct EditPage {
    page: Layout,
    key: String,
    action: String,
    read_only: bool,
    tracking_url: String,
    form: LinkForm,
    redirects: Vec<u16>,
    offers: Vec<OfferRow>,
    rules: usize,
    sticky_hours: u32,
}

/// One of a link's offers as its page shows it.
struct OfferRow {
    id: String,
    url: String,
    /// Its share of the traffic when every offer is eligible, as a percentage.
    share: String,
    cap: String,
    status: &'static str,
    clicks_today: u64,
}

/// A link's page: its tracking URL, its offers with today's clicks, and the form.
async fn edit_page(ctx: &Ctx<'_>, link: &Link, form: LinkForm, status: StatusCode) -> Response<Body> {
    // Today's clicks per offer (UTC), from the counters `group=offer` reports read.
    let mut per_offer: HashMap<String, u64> = HashMap::new();
    if !link.offers.is_empty() {
        let today = time::OffsetDateTime::now_utc().date();
        let period = Period { from: today, to: today, offset: time::UtcOffset::UTC };
        let (first, last) = period.hours();
        match ctx.state.store.conversions().counters(first, last).await {
            Ok(hours) => {
                per_offer =
                    reports::aggregate(&period, Group::Offer, &hours).into_iter().map(|r| (r.key, r.clicks)).collect();
            }
            Err(e) => return store_down(ctx, e),
        }
    }
    let total_weight: u64 = link.offers.iter().map(|o| u64::from(o.weight)).sum::<u64>().max(1);
    let offers = link
        .offers
        .iter()
        .map(|o| OfferRow {
            share: format!("{:.0}%", u64::from(o.weight) as f64 * 100.0 / total_weight as f64),
            cap: o.daily_cap.map_or_else(|| "none".to_owned(), |c| format!("{c} a day")),
            status: if o.status == crate::routing::OfferStatus::Paused { "paused" } else { "active" },
            clicks_today: per_offer.get(&format!("{}/{}", link.key(), o.id)).copied().unwrap_or(0),
            id: o.id.clone(),
            url: o.url.clone(),
        })
        .collect();
    let page = EditPage {
        page: ctx.layout(&format!("Link {}", link.key()), "links"),
        key: link.key(),
        action: format!("/ui/links/{}/{}", path_enc(&link.network), path_enc(&link.slug)),
        read_only: link.source == LinkSource::Config,
        tracking_url: tracking_url(&ctx.state.config.server.public_url, link),
        form,
        redirects: REDIRECT_CODES.to_vec(),
        offers,
        rules: link.rules.len(),
        sticky_hours: link.sticky_hours,
    };
    render(status, &page)
}

/// The link `network/slug`, config first, then the store.
async fn find(ctx: &Ctx<'_>, network: &str, slug: &str) -> Result<Option<Link>, Response<Body>> {
    if let Some(l) = ctx.state.links.config_links().find(|l| l.network == network && l.slug == slug) {
        return Ok(Some(l.clone()));
    }
    ctx.state.store.links().link(network, slug).await.map_err(|e| store_down(ctx, e))
}

/// `/ui/links/{network}/{slug}`: the edit form (read-only for config links).
pub(crate) async fn edit(ctx: &Ctx<'_>, network: &str, slug: &str) -> Response<Body> {
    match find(ctx, network, slug).await {
        Ok(Some(link)) => edit_page(ctx, &link, LinkForm::of(&link), StatusCode::OK).await,
        Ok(None) => page_error(ctx, StatusCode::NOT_FOUND, "No such link."),
        Err(res) => res,
    }
}

/// Puts a refused change's reason next to its field.
fn explain(form: &mut LinkForm, e: LinkChangeError) -> Option<crate::store::StoreError> {
    match e {
        LinkChangeError::Invalid(problems) => {
            for (field, problem) in problems {
                form.errors.entry(field).or_insert(problem);
            }
        }
        LinkChangeError::ReadOnly => {
            form.errors.insert("slug".to_owned(), READ_ONLY.to_owned());
        }
        LinkChangeError::Exists => {
            form.errors
                .insert("slug".to_owned(), format!("{}/{} exists; edit it from the list", form.network, form.slug));
        }
        LinkChangeError::NotFound => {
            form.errors.insert("slug".to_owned(), "no such link".to_owned());
        }
        LinkChangeError::Store(e) => return Some(e),
    }
    None
}

/// `POST /ui/links`: creates an API link.
pub(crate) async fn create(ctx: &Ctx<'_>, fields: &HashMap<String, String>) -> Response<Body> {
    let mut form = LinkForm::read(fields);
    let Some(link) = form.check() else {
        return list(ctx, Some(form)).await;
    };
    match save_link(ctx.state, &link, false).await {
        Ok(_) => redirect(StatusCode::SEE_OTHER, &format!("/ui/links?{}", query_string(&[("created", &link.key())]))),
        Err(e) => match explain(&mut form, e) {
            Some(e) => store_down(ctx, e),
            None => list(ctx, Some(form)).await,
        },
    }
}

/// `POST /ui/links/{network}/{slug}` with `action` `save`, `pause`, `resume` or `delete`.
pub(crate) async fn change(
    ctx: &Ctx<'_>,
    network: &str,
    slug: &str,
    fields: &HashMap<String, String>,
) -> Response<Body> {
    let existing = match find(ctx, network, slug).await {
        Ok(Some(link)) => link,
        Ok(None) => return page_error(ctx, StatusCode::NOT_FOUND, "No such link."),
        Err(res) => return res,
    };
    if existing.source == LinkSource::Config {
        return page_error(ctx, StatusCode::CONFLICT, READ_ONLY);
    }
    let key = existing.key();
    let done = |what: &str| redirect(StatusCode::SEE_OTHER, &format!("/ui/links?{}", query_string(&[(what, &key)])));
    let action = fields.get("action").map(String::as_str).unwrap_or("save");
    let mut form = match action {
        "delete" => {
            return match remove_link(ctx.state, network, slug).await {
                Ok(()) => done("deleted"),
                Err(LinkChangeError::Store(e)) => store_down(ctx, e),
                Err(_) => page_error(ctx, StatusCode::NOT_FOUND, "No such link."),
            };
        }
        "pause" | "resume" => {
            let mut form = LinkForm::of(&existing);
            form.status = if action == "pause" { "paused" } else { "active" }.into();
            form
        }
        "save" => {
            let mut form = LinkForm::read(fields);
            // The path names the link; the form cannot move it.
            form.network = existing.network.clone();
            form.slug = existing.slug.clone();
            form
        }
        other => {
            return page_error(
                ctx,
                StatusCode::BAD_REQUEST,
                &format!("action={other:?}: use save, pause, resume or delete"),
            )
        }
    };
    let Some(mut link) = form.check() else {
        return edit_page(ctx, &existing, form, StatusCode::BAD_REQUEST).await;
    };
    // What the form does not show stays as it was.
    link.offers = existing.offers.clone();
    link.rules = existing.rules.clone();
    link.sticky_hours = existing.sticky_hours;
    link.cap_tz = existing.cap_tz.clone();
    match save_link(ctx.state, &link, true).await {
        Ok(_) => done("saved"),
        Err(e) => match explain(&mut form, e) {
            Some(e) => store_down(ctx, e),
            None => edit_page(ctx, &existing, form, StatusCode::BAD_REQUEST).await,
        },
    }
}
