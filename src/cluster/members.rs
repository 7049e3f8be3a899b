//! Membership: the nodes named by `--peers` (a list, or a DNS name resolved
//! again every few seconds), each probed on `/readyz`, which also tells the
//! node's id (its advertised URL). A node is live once it answered a probe and
//! until a probe or a request to it fails; it is retried at every probe round.
//! This node is always a member; it recognises itself by its id.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A node, as requests reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its advertised URL: its id, what owners are computed from.
    pub id: String,
    /// Where to connect (the listed URL, or a resolved address).
    pub url: String,
}

#[derive(Debug, Clone)]
pub(super) struct Member {
    pub url: String,
    /// Learned from its probe answers.
    pub id: Option<String>,
    pub is_self: bool,
    pub live: bool,
    pub failures: u32,
    /// Failures ever (never reset): how a waiting request tells a new one.
    pub failed_total: u64,
    pub last_error: Option<String>,
    pub last_answer: Option<Instant>,
}

impl Member {
    fn new(url: String) -> Self {
        Member {
            url,
            id: None,
            is_self: false,
            live: false,
            failures: 0,
            failed_total: 0,
            last_error: None,
            last_answer: None,
        }
    }
}

/// What `/cluster` shows of a member.
#[derive(Debug, Serialize)]
pub struct MemberView {
    pub url: String,
    pub id: Option<String>,
    #[serde(rename = "self")]
    pub is_self: bool,
    pub live: bool,
    pub failures: u32,
    pub last_error: Option<String>,
    pub seconds_since_answer: Option<f64>,
}

#[derive(Debug)]
pub(super) struct Members {
    me: String,
    members: Mutex<Vec<Member>>,
    /// Woken when a member fails (not when it shuts down: a draining node
    /// still answers what it was asked).
    failures: tokio::sync::Notify,
}

impl Members {
    pub fn new(me: String, urls: &[String]) -> Self {
        let members = urls
            .iter()
            .filter(|u| **u != me)
            .map(|u| Member::new(u.clone()))
            .collect();
        Members {
            me,
            members: Mutex::new(members),
            failures: tokio::sync::Notify::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The live peers (not this node), each id once.
    pub fn live(&self) -> Vec<Peer> {
        let members = self.members.lock().expect("members lock");
        let mut seen = HashSet::new();
        members
            .iter()
            .filter(|m| m.live && !m.is_self)
            .filter_map(|m| {
                let id = m.id.clone()?;
                (id != self.me && seen.insert(id.clone())).then(|| Peer { id, url: m.url.clone() })
            })
            .collect()
    }

    /// Every member URL to probe (not this node's own).
    pub fn urls(&self) -> Vec<String> {
        let members = self.members.lock().expect("members lock");
        members.iter().filter(|m| !m.is_self).map(|m| m.url.clone()).collect()
    }

    /// Set the member list from a DNS answer: new addresses join (not live
    /// until probed), vanished ones leave.
    pub fn resolved(&self, addrs: &[SocketAddr]) {
        // Peers speak what this node speaks.
        let scheme = if self.me.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let urls: Vec<String> = addrs
            .iter()
            .map(|a| match a {
                SocketAddr::V4(v4) => format!("{scheme}://{v4}"),
                SocketAddr::V6(v6) => format!("{scheme}://[{}]:{}", v6.ip(), v6.port()),
            })
            .collect();
        let mut members = self.members.lock().expect("members lock");
        members.retain(|m| urls.contains(&m.url));
        for url in urls {
            if !members.iter().any(|m| m.url == url) {
                tracing::info!(peer = %url, "a node joined the cluster's DNS name");
                members.push(Member::new(url));
            }
        }
    }

    /// A probe answered: `id` is the node's advertised URL; `serving` false
    /// while it shuts down.
    pub fn answered(&self, url: &str, id: String, serving: bool) {
        let mut members = self.members.lock().expect("members lock");
        let Some(m) = members.iter_mut().find(|m| m.url == url) else {
            return;
        };
        m.is_self = id == self.me;
        if !m.live && serving && !m.is_self {
            tracing::info!(peer = %id, url, "peer is live");
        }
        if m.live && !serving {
            tracing::info!(peer = %id, url, "peer is shutting down");
        }
        m.id = Some(id);
        m.live = serving;
        m.failures = 0;
        m.last_error = None;
        m.last_answer = Some(Instant::now());
    }

    /// A probe or a request failed: the node is skipped until a probe answers.
    pub fn failed(&self, url: &str, error: &str) {
        let mut members = self.members.lock().expect("members lock");
        let Some(m) = members.iter_mut().find(|m| m.url == url) else {
            return;
        };
        if m.live {
            tracing::warn!(peer = ?m.id, url, %error, "peer failed; skipped until it answers a probe");
        }
        m.live = false;
        m.failures = m.failures.saturating_add(1);
        m.failed_total += 1;
        m.last_error = Some(error.to_string());
        drop(members);
        self.failures.notify_waiters();
    }

    /// Resolves once the member at `url` has failed (a probe or a request):
    /// what a request waiting on it races, so a hung node does not hold it
    /// to its own timeout.
    pub async fn failed_since_now(&self, url: &str) {
        let failures_before = self.failures_of(url);
        loop {
            let woken = self.failures.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.failures_of(url) != failures_before {
                return;
            }
            woken.await;
        }
    }

    fn failures_of(&self, url: &str) -> Option<u64> {
        let members = self.members.lock().expect("members lock");
        members.iter().find(|m| m.url == url).map(|m| m.failed_total)
    }

    pub fn view(&self) -> Vec<MemberView> {
        let members = self.members.lock().expect("members lock");
        members
            .iter()
            .map(|m| MemberView {
                url: m.url.clone(),
                id: m.id.clone(),
                is_self: m.is_self,
                live: m.live,
                failures: m.failures,
                last_error: m.last_error.clone(),
                seconds_since_answer: m.last_answer.map(|t| t.elapsed().as_secs_f64()),
            })
            .collect()
    }

    /// (live, not live) peers, for the gauges.
    pub fn counts(&self) -> (usize, usize) {
        let members = self.members.lock().expect("members lock");
        let peers = members.iter().filter(|m| !m.is_self);
        let live = peers.clone().filter(|m| m.live).count();
        (live, peers.count() - live)
    }
}

/// How often a DNS name is resolved again.
pub(super) const DNS_REFRESH: Duration = Duration::from_secs(5);
