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
mod forms;
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
use tracing::{debug, info, instrument, warn};

use crate::admin::{
    AdminRequest, AdminResponse, AuditView, GeView, GroupView, HostView, KeysView, StatusView,
    TokenInfoView,
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
        .route("/groups/add", post(forms::group_add))
        .route("/groups/remove", post(forms::group_remove))
        .route("/groups/rotate", post(forms::group_rotate))
        .route("/groups/rename", post(forms::group_rename))
        .route("/tokens", get(tokens_page))
        .route("/tokens/cancel", post(forms::token_cancel))
        .route("/ges", get(ges_page))
        .route("/ges/add", post(forms::ge_add))
        .route("/ges/set", post(forms::ge_set))
        .route("/ges/revoke", post(forms::ge_revoke))
        .route("/ges/remove", post(forms::ge_remove))
        .route("/tokens/create", post(forms::token_create))
        .route("/hosts", get(hosts_page))
        .route("/hosts/add", post(forms::host_add))
        .route("/hosts/remove", post(forms::host_remove))
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

/// The logged-in user of a GET: name, the session's CSRF token, and the
/// flash message taken for this page.
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

#[instrument(skip_all)]
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
        // Addresses only at DEBUG (STYLE.md §4); the lockout itself is worth a WARN.
        debug!(%ip, "web login refused: too many failures");
        warn!("web admin login refused: too many failed logins from one address");
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
            debug!(%ip, "web admin login failed");
            // Debug-quoted: a failed name is whatever was typed.
            info!(user = ?user, "web admin login failed");
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

async fn hosts_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(w) = app.viewer(&headers) else {
        return to_login();
    };
    let r = app
        .view::<Vec<HostView>>(&w.user, AdminRequest::HostList)
        .await
        .map(|hs| pages::hosts(&hs, &w.csrf));
    page("Hosts behind gateways", &w, r)
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
