//! The web admin of `fpn-gms serve` (docs/ADMIN.md): HTTPS (axum over
//! rustls with the ring provider), off unless `[web] listen` is set.
//!
//! Every change goes through [`crate::core::Core::handle_admin_as`], the
//! same entry as the admin socket's CLI, so both stay consistent and the
//! audit log names the web user (`web:NAME`). Pages are rendered on the
//! server and work without JavaScript.
//!
//! Security: users and Argon2id hashes come from `DATA/web-users`
//! ([`users`], written by `fpn-gms admin-user set`); the session cookie is
//! `Secure; HttpOnly; SameSite=Strict`; every form carries a CSRF token
//! (the session's, or for the login form a double-submit cookie) and a POST
//! without the right one is refused with 403; an address is refused (429)
//! after [`auth::MAX_FAILURES`] failed logins in [`auth::FAIL_WINDOW`].
//!
//! What it never does: show a token again after its creation page, log
//! passwords, session ids or tokens, or change anything on a GET.

pub mod auth;
pub mod pages;
pub mod users;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::{info, warn};

use crate::admin::{
    AdminRequest, AdminResponse, AuditView, DoneView, GeView, GroupView, KeysView, StatusView,
    TokenInfoView, TokenView,
};
use crate::config::{Config, DataDir, WebSettings};
use crate::server::{Shared, with_core};
use crate::{Error, Result, now_unix};

use auth::{Auth, Flash, Gate};

/// The overview reloads itself this often, seconds (a `Refresh` header).
const OVERVIEW_REFRESH: &str = "15";
/// The session cookie.
const SESSION_COOKIE: &str = "fpn_session";
/// The login form's double-submit CSRF cookie.
const LOGIN_COOKIE: &str = "fpn_login";
/// Security headers on every answer: no scripts, no framing, no caching of
/// pages that may show a token.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// A running web admin; dropping it does not stop it, [`Web::stop`] does.
#[derive(Debug)]
pub struct Web {
    handle: axum_server::Handle,
    /// The address bound.
    pub local: SocketAddr,
}

impl Web {
    /// Stops accepting and closes the connections.
    pub fn stop(&self) {
        self.handle.shutdown();
    }
}

struct App {
    shared: Arc<Shared>,
    data: DataDir,
    auth: Mutex<Auth>,
}

/// Starts the web admin when `[web] listen` is set; `None` when it is off.
pub(crate) async fn start(shared: Arc<Shared>, data: DataDir, cfg: &Config) -> Result<Option<Web>> {
    let Some(listen) = cfg.web.listen else {
        return Ok(None);
    };
    let tls = {
        let (chain, key) = match (&cfg.web.cert, &cfg.web.key) {
            (Some(c), Some(k)) => own_cert(&data, c, k)?,
            _ => {
                let names = cert_names(&cfg.web, cfg.public_addr.as_deref(), listen);
                let g = shared.lock();
                let (cert, key) = g.core.ca().issue_web_cert(&names, now_unix())?;
                let ca = g.core.ca().cert_der().to_vec();
                (
                    vec![CertificateDer::from(cert), CertificateDer::from(ca)],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
                )
            }
        };
        let mut sc = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(sc))
    };
    let app = Arc::new(App {
        shared,
        data,
        auth: Mutex::new(Auth::default()),
    });
    let router = Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/groups", get(groups_page))
        .route("/groups/add", post(group_add))
        .route("/groups/remove", post(group_remove))
        .route("/groups/rotate", post(group_rotate))
        .route("/groups/rename", post(group_rename))
        .route("/tokens", get(tokens_page))
        .route("/tokens/cancel", post(token_cancel))
        .route("/ges", get(ges_page))
        .route("/ges/add", post(ge_add))
        .route("/ges/set", post(ge_set))
        .route("/ges/revoke", post(ge_revoke))
        .route("/ges/remove", post(ge_remove))
        .route("/tokens/create", post(token_create))
        .route("/audit", get(audit_page))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app);
    let std_listener = std::net::TcpListener::bind(listen)
        .map_err(|e| Error::Web(format!("cannot listen on {listen}: {e}")))?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(std_listener, tls).handle(handle.clone());
    tokio::spawn(async move {
        if let Err(e) = server
            .serve(router.into_make_service_with_connect_info::<SocketAddr>())
            .await
        {
            warn!(error = %e, "web admin stopped");
        }
    });
    info!(%local, "web admin serving");
    Ok(Some(Web { handle, local }))
}

/// The SANs of a CA-issued web certificate: `[web] names`, else
/// `localhost`, the host of `public_addr` and a non-wildcard listen IP.
fn cert_names(web: &WebSettings, public_addr: Option<&str>, listen: SocketAddr) -> Vec<String> {
    if !web.names.is_empty() {
        return web.names.clone();
    }
    let mut names = vec!["localhost".to_owned()];
    if let Some(host) = public_addr.and_then(|p| p.rsplit_once(':').map(|(h, _)| h)) {
        names.push(host.trim_matches(['[', ']']).to_owned());
    }
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.dedup();
    names
}

/// A user-supplied chain and key (PEM), relative to the data directory.
fn own_cert(
    data: &DataDir,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (cp, kp) = (data.root().join(cert), data.root().join(key));
    let chain = CertificateDer::pem_file_iter(&cp)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Web(format!("certificate {}: {e}", cp.display())))?;
    if chain.is_empty() {
        return Err(Error::Web(format!("no certificate in {}", cp.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&kp)
        .map_err(|e| Error::Web(format!("key {}: {e}", kp.display())))?;
    Ok((chain, key))
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

// ---- sessions ----

/// The logged-in user of a request: (session id, user, csrf, flash).
struct Who {
    user: String,
    csrf: String,
    flash: Option<Flash>,
}

impl App {
    fn session_id(headers: &HeaderMap) -> Option<String> {
        let c = headers.get(header::COOKIE)?.to_str().ok()?;
        auth::cookie(c, SESSION_COOKIE).map(str::to_owned)
    }

    /// False when the session's user was removed (or the user file cannot
    /// be read): the session is ended then.
    fn still_user(&self, id: &str, user: &str) -> bool {
        match users::exists(&self.data, user) {
            Ok(true) => true,
            r => {
                if let Err(e) = r {
                    warn!(error = %e, "web admin users");
                }
                self.auth
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .logout(id);
                false
            }
        }
    }

    /// The session of a GET, taking its flash message.
    fn viewer(&self, headers: &HeaderMap) -> Option<Who> {
        let id = Self::session_id(headers)?;
        let user = {
            let mut a = self.auth.lock().unwrap_or_else(|p| p.into_inner());
            a.session(&id, Instant::now())?.user.clone()
        };
        if !self.still_user(&id, &user) {
            return None;
        }
        let mut a = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        let s = a.session(&id, Instant::now())?;
        Some(Who {
            user: s.user.clone(),
            csrf: s.csrf.clone(),
            flash: s.flash.take(),
        })
    }

    /// The session of a POST whose form carries its CSRF token.
    fn poster(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> PostAuth {
        let Some(id) = Self::session_id(headers) else {
            return PostAuth::NoSession;
        };
        let user = {
            let mut a = self.auth.lock().unwrap_or_else(|p| p.into_inner());
            match a.session(&id, Instant::now()) {
                Some(s) => s.user.clone(),
                None => return PostAuth::NoSession,
            }
        };
        if !self.still_user(&id, &user) {
            return PostAuth::NoSession;
        }
        let mut a = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = a.session(&id, Instant::now()) else {
            return PostAuth::NoSession;
        };
        match form.get("csrf") {
            Some(t) if auth::same_token(t, &s.csrf) => PostAuth::Ok(s.user.clone()),
            _ => PostAuth::BadCsrf,
        }
    }

    fn flash(&self, headers: &HeaderMap, f: Flash) {
        if let Some(id) = Self::session_id(headers) {
            let mut a = self.auth.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = a.session(&id, Instant::now()) {
                s.flash = Some(f);
            }
        }
    }

    /// Runs `req` through the core on behalf of `user`.
    async fn admin(&self, user: &str, req: AdminRequest) -> AdminResponse {
        let who = format!("web:{user}");
        let status = matches!(req, AdminRequest::Status);
        let mut resp = match with_core(&self.shared, move |core| {
            core.handle_admin_as(req, &who, now_unix())
        })
        .await
        {
            Ok(r) => r,
            Err(e) => AdminResponse::err(e),
        };
        if status {
            self.shared.complete_status(&mut resp);
        }
        resp
    }

    async fn view<T: for<'de> serde::Deserialize<'de>>(
        &self,
        user: &str,
        req: AdminRequest,
    ) -> std::result::Result<T, Response> {
        self.admin(user, req)
            .await
            .into_result()
            .map_err(|e| internal(&e.to_string()))
    }
}

enum PostAuth {
    Ok(String),
    NoSession,
    BadCsrf,
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn internal(text: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        html(pages::error("Error", text)),
    )
        .into_response()
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        html(pages::error(
            "Refused",
            "the form had no valid CSRF token (reload the page and try again)",
        )),
    )
        .into_response()
}

// ---- login ----

async fn login_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.viewer(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    login_form(StatusCode::OK, None)
}

/// The login form with a fresh double-submit token in its cookie.
fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let token = match crate::random::<32>() {
        Ok(b) => hex::encode(b),
        Err(e) => return internal(&e.to_string()),
    };
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; Path=/login; Secure; HttpOnly; SameSite=Strict; Max-Age=3600"
    );
    (
        status,
        [(header::SET_COOKIE, cookie)],
        html(pages::login(&token, error)),
    )
        .into_response()
}

async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let cookie_token = headers
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| auth::cookie(c, LOGIN_COOKIE));
    match (cookie_token, form.get("csrf")) {
        (Some(c), Some(f)) if auth::same_token(c, f) => {}
        _ => return csrf_refused(),
    }
    let ip = peer.ip();
    if let Gate::Closed(wait) = app
        .auth
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .gate(ip, Instant::now())
    {
        warn!(%ip, "web login refused: too many failures");
        return login_form(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many failed logins from your address; try again in {} s",
                wait.as_secs().max(1)
            )),
        );
    }
    let user = form.get("user").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let data = app.data.clone();
    let u = user.clone();
    // Argon2 takes tens of milliseconds by design: off the async threads.
    let ok = tokio::task::spawn_blocking(move || users::verify(&data, &u, &password))
        .await
        .map_err(|e| Error::Web(e.to_string()))
        .and_then(|r| r);
    let now = Instant::now();
    match ok {
        Ok(true) => {
            let mut a = app.auth.lock().unwrap_or_else(|p| p.into_inner());
            a.succeeded(ip);
            let id = match a.login(&user, now) {
                Ok(id) => id,
                Err(e) => return internal(&e.to_string()),
            };
            info!(user = %user, "web admin login");
            let cookie = format!(
                "{SESSION_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                auth::SESSION_TTL.as_secs()
            );
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, "/".to_owned()),
                ],
            )
                .into_response()
        }
        Ok(false) => {
            app.auth
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failed(ip, now);
            info!(%ip, "web admin login failed");
            login_form(
                StatusCode::UNAUTHORIZED,
                Some("wrong user name or password"),
            )
        }
        Err(e) => {
            warn!(error = %e, "web admin users");
            internal("the user file cannot be read; see the GMS log")
        }
    }
}

async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match app.poster(&headers, &form) {
        PostAuth::Ok(_) => {
            if let Some(id) = App::session_id(&headers) {
                app.auth
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .logout(&id);
            }
            let gone =
                format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, gone),
                    (header::LOCATION, "/login".to_owned()),
                ],
            )
                .into_response()
        }
        PostAuth::NoSession => to_login(),
        PostAuth::BadCsrf => csrf_refused(),
    }
}

// ---- pages ----

async fn overview(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(w) = app.viewer(&headers) else {
        return to_login();
    };
    let r = async {
        let st: StatusView = app.view(&w.user, AdminRequest::Status).await?;
        let ges: Vec<GeView> = app.view(&w.user, AdminRequest::GeList).await?;
        let keys: Vec<KeysView> = app.view(&w.user, AdminRequest::Keys).await?;
        Ok::<_, Response>(pages::overview(&st, &ges, &keys, now_unix()))
    }
    .await;
    let mut resp = page("Overview", &w, r);
    // Live enough without JavaScript: the browser reloads the overview.
    resp.headers_mut()
        .insert(header::REFRESH, HeaderValue::from_static(OVERVIEW_REFRESH));
    resp
}

async fn groups_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(w) = app.viewer(&headers) else {
        return to_login();
    };
    let r = app
        .view::<Vec<GroupView>>(&w.user, AdminRequest::GroupList)
        .await
        .map(|gs| pages::groups(&gs, &w.csrf));
    page("Groups", &w, r)
}

async fn ges_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(w) = app.viewer(&headers) else {
        return to_login();
    };
    let r = app
        .view::<Vec<GeView>>(&w.user, AdminRequest::GeList)
        .await
        .map(|gs| pages::ges(&gs, &w.csrf));
    page("GEs", &w, r)
}

async fn tokens_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(w) = app.viewer(&headers) else {
        return to_login();
    };
    let r = app
        .view::<Vec<TokenInfoView>>(&w.user, AdminRequest::TokenList)
        .await
        .map(|ts| pages::tokens(&ts, &w.csrf));
    page("Tokens", &w, r)
}

async fn audit_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(w) = app.viewer(&headers) else {
        return to_login();
    };
    // The newest 200: the log is read oldest first, so skip to its end.
    let r = app
        .view::<Vec<AuditView>>(
            &w.user,
            AdminRequest::Audit {
                after: None,
                limit: 10_000,
            },
        )
        .await
        .map(|es| pages::audit(&es[es.len().saturating_sub(200)..]));
    page("Audit log", &w, r)
}

fn page(title: &str, w: &Who, body: std::result::Result<String, Response>) -> Response {
    match body {
        Ok(b) => html(pages::layout(title, Some(&w.csrf), w.flash.as_ref(), &b)),
        Err(r) => r,
    }
}

// ---- changes ----

type FormMap = Form<HashMap<String, String>>;

/// Checks the session and CSRF token, builds the request from the form,
/// runs it, keeps the outcome as the next page's flash, and redirects
/// (post/redirect/get) to `back`.
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
                        serde_json::from_value::<GeView>(resp.data).map(|g| {
                            format!("GE {} added with overlay address {}", g.name, g.overlay)
                        })
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

async fn group_add(State(app): State<Arc<App>>, headers: HeaderMap, Form(f): FormMap) -> Response {
    change(&app, &headers, &f, "/groups", |f| {
        Ok(AdminRequest::GroupAdd {
            num: number(f, "num")?,
            name: field(f, "name")?.to_owned(),
        })
    })
    .await
}

async fn group_remove(
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

async fn group_rotate(
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

async fn group_rename(
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

async fn token_cancel(
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

async fn ge_add(State(app): State<Arc<App>>, headers: HeaderMap, Form(f): FormMap) -> Response {
    change(&app, &headers, &f, "/ges", |f| {
        Ok(AdminRequest::GeAdd {
            name: field(f, "name")?.to_owned(),
            kind: field(f, "kind")?.to_owned(),
            mode: field(f, "mode")?.to_owned(),
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

async fn ge_set(State(app): State<Arc<App>>, headers: HeaderMap, Form(f): FormMap) -> Response {
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

async fn ge_revoke(State(app): State<Arc<App>>, headers: HeaderMap, Form(f): FormMap) -> Response {
    change(&app, &headers, &f, "/ges", |f| {
        Ok(AdminRequest::GeRevoke {
            name: field(f, "name")?.to_owned(),
        })
    })
    .await
}

async fn ge_remove(State(app): State<Arc<App>>, headers: HeaderMap, Form(f): FormMap) -> Response {
    change(&app, &headers, &f, "/ges", |f| {
        Ok(AdminRequest::GeRemove {
            name: field(f, "name")?.to_owned(),
        })
    })
    .await
}

/// Creates a token and shows it on this answer only (no redirect: the
/// token exists nowhere else to show later).
async fn token_create(
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
