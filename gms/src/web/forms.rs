//! The web admin's changes: each POST checks the session and its CSRF
//! token, builds the same [`AdminRequest`] the CLI sends, runs it through
//! the core as `web:NAME`, and redirects back with the outcome as a flash
//! (post/redirect/get). Only a new token is answered directly.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use tracing::instrument;

use super::auth::Flash;
use super::{App, PostAuth, csrf_refused, html, pages, to_login};
use crate::admin::{AdminRequest, DoneView, GeView, HostView, TokenView};

type FormMap = Form<HashMap<String, String>>;

/// Checks the session and CSRF token, builds the request from the form,
/// runs it, keeps the outcome as the next page's flash, and redirects
/// (post/redirect/get) to `back`.
#[instrument(skip_all, fields(path = back))]
async fn change(
    app: &App,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    back: &'static str,
    build: impl FnOnce(&HashMap<String, String>) -> std::result::Result<AdminRequest, String>,
) -> Response {
    let user = match app.poster(headers, form) {
        PostAuth::Ok(u) => u,
        PostAuth::NoSession => return to_login(),
        PostAuth::BadCsrf => return csrf_refused(),
    };
    let flash = match build(form) {
        Err(e) => Flash { ok: false, text: e },
        Ok(req) => {
            let resp = app.admin(&user, req).await;
            if resp.ok {
                let text = serde_json::from_value::<DoneView>(resp.data.clone())
                    .map(|d| d.done)
                    .or_else(|_| {
                        serde_json::from_value::<GeView>(resp.data.clone()).map(|g| {
                            format!("GE {} added with overlay address {}", g.name, g.overlay)
                        })
                    })
                    .or_else(|_| {
                        serde_json::from_value::<HostView>(resp.data)
                            .map(|h| format!("host {} added behind {}", h.name, h.via))
                    })
                    .unwrap_or_else(|_| "done".into());
                Flash { ok: true, text }
            } else {
                Flash {
                    ok: false,
                    text: resp.error.unwrap_or_else(|| "refused".into()),
                }
            }
        }
    };
    app.flash(headers, flash);
    Redirect::to(back).into_response()
}

fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> std::result::Result<&'a str, String> {
    f.get(k)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{k} is missing"))
}

fn number(f: &HashMap<String, String>, k: &str) -> std::result::Result<u32, String> {
    let v = field(f, k)?;
    v.parse().map_err(|_| format!("{k}: {v:?} is not a number"))
}

fn group_numbers(f: &HashMap<String, String>) -> std::result::Result<Vec<u32>, String> {
    f.get("groups")
        .map(String::as_str)
        .unwrap_or("")
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("groups: {s:?} is not a group number"))
        })
        .collect()
}

pub(super) async fn group_add(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/groups", |f| {
        Ok(AdminRequest::GroupAdd {
            num: number(f, "num")?,
            name: field(f, "name")?.to_owned(),
        })
    })
    .await
}

pub(super) async fn group_remove(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/groups", |f| {
        Ok(AdminRequest::GroupRemove {
            num: number(f, "num")?,
        })
    })
    .await
}

pub(super) async fn group_rotate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/groups", |f| {
        let group = match f.get("num") {
            Some(_) => Some(number(f, "num")?),
            None => None,
        };
        Ok(AdminRequest::Rotate { group })
    })
    .await
}

pub(super) async fn group_rename(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/groups", |f| {
        Ok(AdminRequest::GroupRename {
            num: number(f, "num")?,
            name: field(f, "name")?.to_owned(),
        })
    })
    .await
}

pub(super) async fn token_cancel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/tokens", |f| {
        Ok(AdminRequest::TokenCancel {
            id: field(f, "id")?.to_owned(),
        })
    })
    .await
}

pub(super) async fn ge_add(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/ges", |f| {
        Ok(AdminRequest::GeAdd {
            name: field(f, "name")?.to_owned(),
            // An empty choice: the GMS derives it (docs/MANAGEMENT.md).
            kind: f.get("kind").filter(|k| !k.is_empty()).cloned(),
            mode: f.get("mode").filter(|m| !m.is_empty()).cloned(),
            groups: group_numbers(f)?,
            protect: f
                .get("protect")
                .map(String::as_str)
                .unwrap_or("")
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    })
    .await
}

pub(super) async fn ge_set(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/ges", |f| {
        Ok(AdminRequest::GeSet {
            name: field(f, "name")?.to_owned(),
            kind: None,
            mode: Some(field(f, "mode")?.to_owned()),
            groups: Some(group_numbers(f)?),
            add_groups: Vec::new(),
            remove_groups: Vec::new(),
            protect: None,
        })
    })
    .await
}

pub(super) async fn ge_revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/ges", |f| {
        Ok(AdminRequest::GeRevoke {
            name: field(f, "name")?.to_owned(),
        })
    })
    .await
}

pub(super) async fn ge_remove(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/ges", |f| {
        Ok(AdminRequest::GeRemove {
            name: field(f, "name")?.to_owned(),
        })
    })
    .await
}

pub(super) async fn host_add(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/hosts", |f| {
        Ok(AdminRequest::HostAdd {
            name: field(f, "name")?.to_owned(),
            via: field(f, "via")?.to_owned(),
            lan: field(f, "lan")?
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            groups: group_numbers(f)?,
        })
    })
    .await
}

pub(super) async fn host_remove(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    change(&app, &headers, &f, "/hosts", |f| {
        Ok(AdminRequest::HostRemove {
            name: field(f, "name")?.to_owned(),
        })
    })
    .await
}

/// Creates a token and shows it on this answer only (no redirect: the
/// token exists nowhere else to show later).
#[instrument(skip_all)]
pub(super) async fn token_create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): FormMap,
) -> Response {
    let user = match app.poster(&headers, &f) {
        PostAuth::Ok(u) => u,
        PostAuth::NoSession => return to_login(),
        PostAuth::BadCsrf => return csrf_refused(),
    };
    let req = match (field(&f, "name"), f.get("ttl").map(|t| t.parse::<u64>())) {
        (Ok(n), Some(Ok(ttl))) => AdminRequest::TokenCreate {
            name: n.to_owned(),
            ttl_secs: Some(ttl),
        },
        (Ok(n), None) => AdminRequest::TokenCreate {
            name: n.to_owned(),
            ttl_secs: None,
        },
        (Err(e), _) => return bad_form(&app, &headers, e),
        (_, Some(Err(_))) => return bad_form(&app, &headers, "ttl is not a number".into()),
    };
    let t: TokenView = match app.admin(&user, req).await.into_result() {
        Ok(t) => t,
        Err(e) => return bad_form(&app, &headers, e.to_string()),
    };
    let qr = match qrcode::QrCode::new(t.token.as_bytes()) {
        Ok(q) => q
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(240, 240)
            .build(),
        Err(e) => format!("<p>(no QR code: {})</p>", pages::esc(&e.to_string())),
    };
    let Some(w) = app.viewer(&headers) else {
        return to_login();
    };
    html(pages::layout(
        "New enrollment token",
        Some(&w.csrf),
        None,
        &pages::token(&t, &qr),
    ))
}

fn bad_form(app: &App, headers: &HeaderMap, text: String) -> Response {
    app.flash(headers, Flash { ok: false, text });
    Redirect::to("/ges").into_response()
}
