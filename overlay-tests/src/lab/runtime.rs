//! Changing a running lab: attaching and detaching hosts on switches
//! (roaming), links up and down, addresses and routes, and captures.
//!
//! Each change updates the lab's recorded state (so [`Lab::addr`] tells the
//! truth afterwards) and its state file (so `fpn-lab` in another process
//! sees it).

use std::net::IpAddr;
use std::time::Duration;

use super::Lab;
use crate::process::{Proc, Process, Spec};
use crate::sys;
use crate::topology::RouteTarget;
use crate::{Capture, Cidr, Error};

impl Lab {
    /// Replaces `host`'s resolv.conf (`/etc/netns/NS/resolv.conf`, see the
    /// topology key `resolv_conf`): commands started from now on resolve
    /// names with `text`; processes already running keep the file they had.
    pub fn set_resolv_conf(&self, host: &str, text: &str) -> Result<(), Error> {
        let ns = self.netns(host)?;
        crate::resolv::write(&ns, text)?;
        tracing::debug!(%host, "resolv.conf replaced");
        Ok(())
    }

    /// Removes `host`'s own resolv.conf: new commands use the machine's again.
    pub fn clear_resolv_conf(&self, host: &str) -> Result<(), Error> {
        crate::resolv::remove(&self.netns(host)?);
        Ok(())
    }

    /// Attaches `host` to switch `link` with the addresses (and default
    /// route, if the end has a `gateway`) the topology gives that end.
    pub fn attach(&self, host: &str, link: &str) -> Result<(), Error> {
        self.attach_end(host, link, true)?;
        self.save()
    }

    /// Detaches `host` from switch `link`: its interface disappears, and with
    /// it the addresses and routes through it.
    pub fn detach(&self, host: &str, link: &str) -> Result<(), Error> {
        self.switch_link(host, link)?;
        let (ns, ifname) = {
            let st = self.lock();
            let end = st.end(host, link)?;
            if !end.attached {
                return Err(not_attached(host, link));
            }
            (st.netns(host)?.to_string(), end.ifname.clone())
        };
        self.tools.link_del(&ns, &ifname)?;
        self.update_end(host, link, |e| {
            e.attached = false;
            e.addrs.clear();
        });
        tracing::info!(host, link, "detached");
        self.save()
    }

    /// Moves `host` from switch `from` to switch `to` (detach, then attach):
    /// a laptop changing networks. Connections keep their old addresses; the
    /// host's new address is `lab.addr(host, to)`.
    pub fn roam(&self, host: &str, from: &str, to: &str) -> Result<(), Error> {
        // Check both before changing anything, so a typo cannot strand the host.
        self.switch_link(host, to)?;
        if self.lock().end(host, to)?.attached {
            return Err(Error::AttachState {
                host: host.into(),
                link: to.into(),
                state: "already attached to",
            });
        }
        self.detach(host, from)?;
        self.attach(host, to)
    }

    /// Sets `host`'s interface on `link` up or down (carrier loss for the
    /// peer). Bringing it up restores the end's default route and the host's
    /// static routes through it, which the kernel dropped.
    pub fn set_link_up(&self, host: &str, link: &str, up: bool) -> Result<(), Error> {
        let st = self.state();
        let end = st.end(host, link)?;
        if !end.attached {
            return Err(not_attached(host, link));
        }
        let ns = st.netns(host)?;
        self.tools.link_up(ns, &end.ifname, up)?;
        if up {
            if let Some(sw) = st.switches.get(link) {
                self.tools.wait_link_works(ns, &end.ifname, sw, host)?;
            }
            let topo_end = st.topology.end(host, link);
            if let Some(gw) = topo_end.and_then(|e| e.gateway) {
                self.tools
                    .route_replace(ns, &RouteTarget::Default, Some(gw), Some(&end.ifname))?;
            }
            let through_link = |r: &&crate::topology::Route| {
                r.dev.as_deref() == Some(link)
                    || r.via
                        .is_some_and(|v| end.addrs.iter().any(|a| a.contains(v)))
            };
            let routes: Vec<_> = st.topology.hosts[host]
                .routes
                .iter()
                .filter(through_link)
                .cloned()
                .collect();
            crate::build::apply_routes(&self.tools, ns, &routes, |l| {
                st.ends
                    .get(host)
                    .and_then(|m| m.get(l))
                    .map(|e| e.ifname.clone())
            })?;
        }
        Ok(())
    }

    /// Adds an address to `host`'s interface on `link`.
    pub fn add_addr(&self, host: &str, link: &str, addr: Cidr) -> Result<(), Error> {
        let (ns, ifname) = self.attached_iface(host, link)?;
        self.tools.addr_add(&ns, &ifname, &addr)?;
        self.update_end(host, link, |e| e.addrs.push(addr));
        self.save()
    }

    /// Removes an address from `host`'s interface on `link`.
    pub fn del_addr(&self, host: &str, link: &str, addr: Cidr) -> Result<(), Error> {
        let (ns, ifname) = self.attached_iface(host, link)?;
        self.tools.addr_del(&ns, &ifname, &addr)?;
        self.update_end(host, link, |e| e.addrs.retain(|a| *a != addr));
        self.save()
    }

    /// Replaces `host`'s default route (of `via`'s family).
    pub fn set_default_route(&self, host: &str, via: IpAddr) -> Result<(), Error> {
        let ns = self.netns(host)?;
        self.tools
            .route_replace(&ns, &RouteTarget::Default, Some(via), None)
    }

    /// Adds or replaces a route on `host`: `to` is "default" or a prefix.
    pub fn replace_route(&self, host: &str, to: &str, via: IpAddr) -> Result<(), Error> {
        let target = RouteTarget::try_from(to.to_string())?;
        let ns = self.netns(host)?;
        self.tools.route_replace(&ns, &target, Some(via), None)
    }

    /// Deletes a route on `host`: `to` is "default" (IPv4; "::/0" for IPv6)
    /// or a prefix.
    pub fn delete_route(&self, host: &str, to: &str) -> Result<(), Error> {
        let target = RouteTarget::try_from(to.to_string())?;
        let v6 = matches!(target, RouteTarget::Net(c) if c.addr().is_ipv6());
        let ns = self.netns(host)?;
        self.tools.route_del(&ns, &target, v6)
    }

    /// Starts tcpdump on `host`'s interface on `link` with a pcap `filter`
    /// (e.g. `"udp port 7000"`; empty for everything). Returns once tcpdump
    /// is listening, so no packet sent afterwards is missed.
    pub fn capture(&self, host: &str, link: &str, filter: &str) -> Result<Capture, Error> {
        let (ns, ifname) = self.attached_iface(host, link)?;
        self.capture_on(host, &ns, &ifname, filter)
    }

    /// Starts tcpdump on the bridge of switch `link`: sees every frame
    /// between the hosts on that switch.
    pub fn capture_switch(&self, link: &str, filter: &str) -> Result<Capture, Error> {
        let ns = self
            .lock()
            .switches
            .get(link)
            .cloned()
            .ok_or_else(|| Error::Topology(format!("`{link}` is not a switch of this lab")))?;
        self.capture_on(link, &ns, crate::naming::BRIDGE, filter)
    }

    fn capture_on(
        &self,
        label: &str,
        ns: &str,
        ifname: &str,
        filter: &str,
    ) -> Result<Capture, Error> {
        let tcpdump = sys::find_tool("tcpdump")?;
        let pcap = self.new_file(&format!("{label}-{ifname}"), "pcap");
        let log = self.new_file(&format!("{label}-{ifname}-tcpdump"), "log");
        // --immediate-mode: hand each packet over at once rather than per
        // ring block, so nothing waits in the kernel when the capture stops;
        // -U: write each packet at once (snapshots see it); -Z root: do not
        // drop privileges, or tcpdump may not write into a root-owned dir.
        let mut argv: Vec<std::ffi::OsString> = vec![tcpdump.into_os_string()];
        let opts = [
            "-i",
            ifname,
            "-n",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
        ];
        for a in opts {
            argv.push(a.into());
        }
        argv.push(pcap.clone().into_os_string());
        if !filter.trim().is_empty() {
            argv.push(filter.into());
        }
        let spec = Spec {
            ip: self.tools.ip.clone(),
            netns: ns.to_string(),
            argv,
            env: vec![],
        };
        let inner = Proc::start(&spec, label, "tcpdump", log)?;
        self.registry.add(inner.clone());
        let process = Process::new(inner);
        process.wait_for_log("listening on", Duration::from_secs(10))?;
        Ok(Capture::new(process, pcap))
    }

    // ---- helpers ----

    /// Creates `host`'s interface on switch `link` and configures it.
    pub(super) fn attach_end(&self, host: &str, link: &str, runtime: bool) -> Result<(), Error> {
        let st = self.state();
        let l = self.switch_link(host, link)?;
        let end = l.end(host).ok_or_else(|| Error::UnknownEnd {
            host: host.into(),
            link: link.into(),
        })?;
        if st.end(host, link)?.attached {
            return Err(Error::AttachState {
                host: host.into(),
                link: link.into(),
                state: "already attached to",
            });
        }
        let ifname = end.ifname();
        let busy = st
            .ends
            .get(host)
            .into_iter()
            .flatten()
            .find(|(name, e)| name.as_str() != link && e.attached && e.ifname == ifname);
        if let Some((other, _)) = busy {
            return Err(Error::Topology(format!(
                "host `{host}`: interface `{ifname}` is in use on link `{other}`; detach it first"
            )));
        }
        let ns = st.netns(host)?;
        let sw = &st.switches[link];
        self.tools.veth(ns, ifname, sw, host)?;
        let configured = (|| {
            if let Some(mtu) = l.mtu {
                self.tools.set_mtu(ns, ifname, mtu)?;
                self.tools.set_mtu(sw, host, mtu)?;
            }
            self.tools.bridge_port(sw, host)?;
            self.tools.shape(ns, ifname, &l)?;
            self.tools.link_up(ns, ifname, true)?;
            // Addresses only over a working link, as DHCP would give them.
            self.tools.wait_link_works(ns, ifname, sw, host)?;
            for addr in &end.addrs {
                self.tools.addr_add(ns, ifname, addr)?;
            }
            if runtime && let Some(gw) = end.gateway {
                self.tools
                    .route_replace(ns, &RouteTarget::Default, Some(gw), Some(ifname))?;
            }
            Ok(())
        })();
        if let Err(e) = configured {
            // Leave no half-configured interface behind.
            let _ = self.tools.link_del(ns, ifname);
            return Err(e);
        }
        self.update_end(host, link, |e| {
            e.attached = true;
            e.addrs = end.addrs.clone();
        });
        if runtime {
            tracing::info!(host, link, "attached");
        }
        Ok(())
    }

    /// The topology's link `link`, which must be a switch with an end of `host`.
    fn switch_link(&self, host: &str, link: &str) -> Result<crate::topology::Link, Error> {
        let st = self.lock();
        st.netns(host)?;
        let l = st.topology.link(link).filter(|l| l.end(host).is_some());
        let l = l.ok_or_else(|| Error::UnknownEnd {
            host: host.into(),
            link: link.into(),
        })?;
        if !l.is_switch() {
            return Err(Error::Topology(format!(
                "link `{link}` is a veth pair: hosts attach and detach only on switches (use \
                 set_link_up for a pair)"
            )));
        }
        Ok(l.clone())
    }

    /// (namespace, interface) of an attached end.
    fn attached_iface(&self, host: &str, link: &str) -> Result<(String, String), Error> {
        let st = self.lock();
        let end = st.end(host, link)?;
        if !end.attached {
            return Err(not_attached(host, link));
        }
        Ok((st.netns(host)?.to_string(), end.ifname.clone()))
    }

    fn update_end(&self, host: &str, link: &str, f: impl FnOnce(&mut crate::EndState)) {
        if let Some(e) = self.lock().ends.get_mut(host).and_then(|m| m.get_mut(link)) {
            f(e);
        }
    }
}

fn not_attached(host: &str, link: &str) -> Error {
    Error::AttachState {
        host: host.into(),
        link: link.into(),
        state: "not attached to",
    }
}
