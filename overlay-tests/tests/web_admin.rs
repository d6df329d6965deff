//! Issue 15 part 1: the GMS's web admin in a real browser (Debian's
//! headless Chromium driven by chromedriver over WebDriver, from Rust with
//! fantoccini). The GMS, its web admin (HTTPS on 127.0.0.1:8443 of the GMS
//! host) and chromedriver run in the lab's GMS namespace; the test reaches
//! chromedriver through a TCP forwarder into that namespace.
//!
//! - log in, create a group, add a GE, create a token, enroll a real
//!   fpn-node with it, see it online on the overview, revoke it and see it
//!   cut off (the node hears of it and stops; the page shows it offline);
//!   the audit log names the web user;
//! - a form posted without its CSRF token is refused and changes nothing;
//!   a wrong password is refused, and after five failures even the right
//!   one is (rate limit).
//!
//! Screenshots of each page go to `target/web-admin/` (printed); docs/ADMIN.md
//! shows copies from docs/admin/.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};

const WEB: &str = "https://127.0.0.1:8443";
const DRIVER_PORT: u16 = 9515;
const USER: &str = "admin";
const PASSWORD: &str = "a long test password";
/// Bound on waiting for a page to show a state (online, revoked).
const SHOW_TIMEOUT: Duration = Duration::from_secs(30);

fn spec(nodes: Vec<NodeSpec>) -> Spec {
    let mut s = Spec::new(&[], nodes);
    s.gms_config = "[web]\nlisten = \"127.0.0.1:8443\"\n".into();
    // The test defines the group and the GE through the browser.
    s.define = false;
    s
}

/// The overlay with its GMS serving the web admin, and the admin user set.
fn start(nodes: Vec<NodeSpec>) -> Overlay {
    common::need(&["tcpdump", "ping", "chromium", "chromedriver"]);
    let lab = fpn_lab::Lab::up(fpn_lab::config_path("overlay.toml")).expect("overlay lab");
    let ov = Overlay::prepare(lab, &spec(nodes)).unwrap_or_else(|e| panic!("overlay: {e}"));
    ov.gms_admin_stdin(&["admin-user", "set", USER], &format!("{PASSWORD}\n"))
        .unwrap();
    ov
}

/// chromedriver in the GMS host, a forwarder to it, and a browser session.
struct Browser {
    client: Client,
    rt: tokio::runtime::Runtime,
    _driver: fpn_lab::Process,
    _forward: Forward,
    shots: PathBuf,
}

impl Browser {
    fn open(ov: &Overlay, shots: &str) -> Browser {
        let driver = ov
            .lab()
            .spawn(
                ov.gms_host(),
                ["chromedriver".to_string(), format!("--port={DRIVER_PORT}")],
            )
            .unwrap();
        driver
            .wait_for_log("started successfully", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("chromedriver: {e}\n{}", driver.log()));
        let forward = Forward::start(ov, DRIVER_PORT);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let profile = ov.lab().log_dir().join("chromium-profile");
        let caps: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "browserName": "chrome",
                // The web admin's certificate comes from the GMS's own CA
                // (Ed25519), which no browser verifies: accept it, as an
                // operator does once.
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1100,900",
                             format!("--user-data-dir={}", profile.display())]
                }
            }))
            .unwrap();
        let url = format!("http://{}", forward.addr);
        let client = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url),
            )
            .unwrap_or_else(|e| panic!("WebDriver session: {e}\n{}", driver.log()));
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/web-admin")
            .join(shots);
        std::fs::create_dir_all(&shots).unwrap();
        println!("screenshots in {}", shots.display());
        Browser {
            client,
            rt,
            _driver: driver,
            _forward: forward,
            shots,
        }
    }

    fn goto(&self, path: &str) {
        self.rt
            .block_on(self.client.goto(&format!("{WEB}{path}")))
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    fn fill(&self, id: &str, text: &str) {
        self.rt
            .block_on(async {
                let e = self.client.find(Locator::Id(id)).await?;
                e.clear().await?;
                e.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("fill #{id}: {e}"));
    }

    fn select(&self, id: &str, value: &str) {
        self.rt
            .block_on(async {
                self.client
                    .find(Locator::Id(id))
                    .await?
                    .select_by_value(value)
                    .await
            })
            .unwrap_or_else(|e| panic!("select #{id}={value}: {e}"));
    }

    /// Clicks button `#id` of a form and waits for the page it leads to.
    fn click(&self, id: &str) {
        self.click_css(&format!("#{id}"));
    }

    /// Clicks the first element matching `css` and waits for the page it
    /// leads to: the old page's root goes stale, the new one finishes
    /// loading (bounded).
    fn click_css(&self, css: &str) {
        self.rt
            .block_on(async {
                let old = self.client.find(Locator::Css("html")).await?;
                self.client.find(Locator::Css(css)).await?.click().await?;
                let deadline = Instant::now() + Duration::from_secs(15);
                while old.tag_name().await.is_ok() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                while Instant::now() < deadline {
                    let state = self
                        .client
                        .execute("return document.readyState", vec![])
                        .await?;
                    if state == "complete" {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok::<_, fantoccini::error::CmdError>(())
            })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The text of the element `css`, or "" when there is none.
    fn text(&self, css: &str) -> String {
        self.rt.block_on(async {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        })
    }

    fn body(&self) -> String {
        self.text("body")
    }

    fn path(&self) -> String {
        self.rt
            .block_on(self.client.current_url())
            .unwrap()
            .path()
            .to_string()
    }

    fn shot(&self, name: &str) {
        let png = self.rt.block_on(self.client.screenshot()).unwrap();
        let p = self.shots.join(format!("{name}.png"));
        std::fs::write(&p, png).unwrap();
        println!("screenshot {}", p.display());
    }

    fn login(&self, password: &str) {
        self.goto("/login");
        self.fill("user", USER);
        self.fill("password", password);
        self.click("login");
    }

    /// Reloads `path` until `css`'s text contains `needle` (bounded).
    fn wait_text(&self, path: &str, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + SHOW_TIMEOUT;
        loop {
            self.goto(path);
            let t = self.text(css);
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{path} {css} never showed {needle:?}; last: {t:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser; chromedriver and the forwarder go after it.
        let c = self.client.clone();
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), c.close()).await });
    }
}

/// Forwards a loopback port of the test's namespace to `127.0.0.1:port`
/// in the GMS host's namespace; stops (and lets its namespace thread end)
/// on drop.
struct Forward {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Forward {
    fn start(ov: &Overlay, port: u16) -> Forward {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (req_tx, req_rx) =
            std::sync::mpsc::channel::<std::sync::mpsc::Sender<std::io::Result<TcpStream>>>();
        // Sockets made on this thread belong to the GMS host's namespace;
        // it ends when the acceptor drops `req_tx`.
        let _ns = ov
            .lab()
            .thread_in(ov.gms_host(), move || {
                for reply in req_rx {
                    let _ = reply.send(TcpStream::connect(("127.0.0.1", port)));
                }
            })
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(a) = conn else { continue };
                let (tx, rx) = std::sync::mpsc::channel();
                if req_tx.send(tx).is_err() {
                    break;
                }
                let Ok(Ok(b)) = rx.recv() else { continue };
                pipe(a, b);
            }
        });
        Forward {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Copies both ways between two streams until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    copy(a.try_clone().unwrap(), b.try_clone().unwrap());
    copy(b, a);
}

#[test]
fn web_admin_defines_enrolls_and_revokes_a_real_node() {
    let ov = start(vec![NodeSpec::new("a", Mode::Op, &[1])]);
    let b = Browser::open(&ov, "flow");

    // Not logged in: every page leads to the login form.
    b.goto("/");
    assert_eq!(b.path(), "/login");
    b.shot("login");
    b.login(PASSWORD);
    assert_eq!(b.path(), "/", "{}", b.body());

    b.goto("/groups");
    b.fill("group-num", "1");
    b.fill("group-name", "home");
    b.click("group-add-button");
    assert!(
        b.text("#flash").contains("group 1 (home) added"),
        "{}",
        b.body()
    );
    assert!(b.text("#group-1").contains("home"), "{}", b.body());
    b.shot("groups");

    b.goto("/ges");
    b.fill("ge-name", "a");
    b.select("ge-kind", "ges");
    b.select("ge-mode", "op");
    b.fill("ge-groups", "1");
    b.click("ge-add-button");
    assert!(b.text("#flash").contains("GE a added"), "{}", b.body());
    assert!(b.text("#ge-a").contains("added"), "{}", b.body());

    // A gateway, and a host behind it on the Hosts page.
    b.fill("ge-name", "gw");
    b.select("ge-kind", "gen");
    b.select("ge-mode", "cl");
    b.fill("ge-groups", "1");
    b.fill("ge-protect", "192.168.1.0/24");
    b.click("ge-add-button");
    assert!(b.text("#flash").contains("GE gw added"), "{}", b.body());
    b.goto("/hosts");
    b.fill("host-name", "nas");
    b.fill("host-via", "gw");
    b.fill("host-lan", "192.168.1.10");
    b.click("host-add-button");
    assert!(
        b.text("#flash").contains("host nas added behind gw"),
        "{}",
        b.body()
    );
    assert_eq!(b.text("#host-nas .via"), "gw", "{}", b.body());
    assert_eq!(b.text("#host-nas .lan"), "192.168.1.10", "{}", b.body());
    assert_eq!(b.text("#host-nas .groups"), "1", "the gateway's groups");
    b.fill("host-name", "tv");
    b.fill("host-via", "gw");
    b.fill("host-lan", "10.0.0.1");
    b.click("host-add-button");
    assert!(b.text("#flash").contains("outside"), "{}", b.body());
    b.shot("hosts");
    b.goto("/ges");

    // A token cancelled on the tokens page no longer enrolls.
    b.click("token-a");
    let cancelled = b.text("#token");
    b.goto("/tokens");
    assert!(b.text("#tokens").contains("a"), "{}", b.body());
    b.shot("tokens");
    b.click_css("#tokens button");
    assert!(b.text("#flash").contains("cancelled"), "{}", b.body());
    let refused = ov.enroll_with_token("a", &cancelled);
    assert!(refused.is_err(), "a cancelled token enrolled: {refused:?}");

    b.goto("/ges");
    b.click("token-a");
    let token = b.text("#token");
    assert!(token.len() > 20, "no token on the page: {}", b.body());
    assert!(
        b.rt.block_on(b.client.find(Locator::Css("#qr svg")))
            .is_ok(),
        "no QR code"
    );
    b.shot("token");

    // A real node enrolls with the token the page showed, and comes up.
    let v = ov.enroll_with_token("a", &token).unwrap();
    assert!(
        v.get("overlay").is_some() || v.to_string().contains("100.64."),
        "{v}"
    );
    ov.up("a").unwrap();
    b.wait_text("/", "#ov-a", "online");
    assert!(
        b.text("#online-count").starts_with("1 of 2"),
        "{}",
        b.body()
    );
    let serial = b.text("#zone-serial");
    assert!(serial.parse::<u32>().is_ok(), "zone serial {serial:?}");
    b.shot("overview");
    b.goto("/ges");
    // The node's version, from its session's hello.
    let version = b.text("#ge-a .version");
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "{}", b.body());
    b.shot("ges");

    // Revoke: the node hears of it and stops; the pages show it cut off.
    b.click("revoke-a");
    assert!(b.text("#flash").contains("revoked"), "{}", b.body());
    ov.with_process("a", |p| {
        p.expect("node a runs")
            .wait_for_log("this node was revoked by the GMS", SHOW_TIMEOUT)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}\n{}", ov.log_tails(20)));
    let row = b.wait_text("/ges", "#ge-a", "offline");
    assert!(row.contains("revoked"), "{row}");
    b.wait_text("/", "#ov-a", "offline");

    b.goto("/audit");
    let audit = b.text("#audit");
    for what in [
        "group add 1 name=home",
        "ge add a",
        "host add nas via=gw",
        "token create a",
        "ge revoke a",
    ] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains("web:admin") && l.contains(what)),
            "audit log lacks {what:?} by web:admin:\n{audit}"
        );
    }
    b.shot("audit");
    // The same log through the CLI's admin socket: one core behind both.
    let cli = ov.gms_admin(&["audit"]).unwrap();
    assert!(
        cli.contains("web:admin") && cli.contains("ge revoke a"),
        "{cli}"
    );

    // A phone-sized overview (one column, tables scroll).
    b.rt.block_on(b.client.set_window_size(412, 900)).unwrap();
    b.goto("/");
    b.shot("overview-phone");
}

#[test]
fn web_admin_refuses_forms_without_csrf_and_rate_limits_wrong_passwords() {
    let ov = start(Vec::new());
    let b = Browser::open(&ov, "refusals");

    b.login(PASSWORD);
    assert_eq!(b.path(), "/", "{}", b.body());
    // The browser posts the group form with its CSRF field removed.
    b.goto("/groups");
    b.fill("group-num", "7");
    b.fill("group-name", "sneaky");
    b.rt.block_on(b.client.execute(
        "document.querySelector('#group-add input[name=csrf]').remove();",
        vec![],
    ))
    .unwrap();
    b.click("group-add-button");
    assert!(
        b.text("#error").contains("no valid CSRF token"),
        "{}",
        b.body()
    );
    b.shot("csrf-refused");
    b.goto("/groups");
    assert!(
        !b.body().contains("sneaky"),
        "the refused form changed something"
    );
    let groups = ov.gms_json(&["group", "list"]).unwrap();
    assert_eq!(groups.as_array().map(Vec::len), Some(0), "{groups}");

    // A user removed with the CLI is logged out at its next request.
    ov.gms_admin(&["admin-user", "remove", USER]).unwrap();
    b.goto("/groups");
    assert_eq!(b.path(), "/login", "a removed user's session still works");
    ov.gms_admin_stdin(&["admin-user", "set", USER], &format!("{PASSWORD}\n"))
        .unwrap();
    b.login(PASSWORD);
    assert_eq!(b.path(), "/", "{}", b.body());

    b.click("logout");
    assert_eq!(b.path(), "/login");
    for i in 0..5 {
        b.login("not the password");
        assert!(
            b.text("#login-error")
                .contains("wrong user name or password"),
            "attempt {i}: {}",
            b.body()
        );
    }
    b.shot("login-wrong");
    // Five failures: now even the right password is refused, unchecked.
    b.login(PASSWORD);
    assert!(
        b.text("#login-error").contains("too many failed logins"),
        "{}",
        b.body()
    );
    assert_eq!(b.path(), "/login");
    b.shot("login-rate-limited");
}
