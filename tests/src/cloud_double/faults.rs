//! What the tests make go wrong (rules, consumed in order) and what they
//! read back (counters).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The routes the double serves, for counters and rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /storage/v1/bucket`
    Buckets,
    /// `POST /storage/v1/object/list/<bucket>`
    List,
    /// `POST /storage/v1/object/list-v2/<bucket>`
    ListV2,
    /// `GET /storage/v1/object/authenticated/<bucket>/<key>`
    Download,
    /// `GET /auth/v1/settings`
    Settings,
    /// Anything else (answered 404).
    Other,
}

/// Which requests a [`Rule`] applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Downloads of one object.
    Object { bucket: String, key: String },
    /// Every request of a route.
    Route(Route),
    /// The n-th, 2n-th, 3n-th… request of a route (counted from the
    /// double's start, rejected requests included).
    EveryNth { route: Route, n: u64 },
}

/// What a [`Rule`] does to a request it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers this status instead (429 with `Retry-After: <s>` when
    /// `retry_after` is set). Bodies: 429 and 500 in Storage's error shape,
    /// 502/503/504 in the API gateway's (`{"message": ...}`).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Waits this long before the response's headers.
    DelayHeaders(Duration),
    /// Sends a download's body `chunk` bytes at a time, waiting `interval`
    /// before each chunk.
    Trickle { chunk: usize, interval: Duration },
    /// Announces the whole `Content-Length` but closes the connection
    /// after `after` bytes of the body.
    Truncate { after: u64 },
}

/// One fault for the requests `target` names, `times` times
/// ([`Faults::ALWAYS`] for ever).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    pub fault: Fault,
    pub times: u32,
}

/// What to do to one request: at most one fault of each kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    pub status: Option<(u16, Option<u64>)>,
    pub delay: Option<Duration>,
    pub trickle: Option<(usize, Duration)>,
    pub truncate: Option<u64>,
}

/// The switches and rules of one double (`double.faults()`). Rules are
/// tried in the order they were added; each fires until its count is used.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    reject_key: AtomicBool,
}

impl Faults {
    /// `times` for a rule that never wears out.
    pub const ALWAYS: u32 = u32::MAX;

    /// Adds a rule.
    pub fn add(&self, rule: Rule) -> &Self {
        self.rules.lock().unwrap().push(rule);
        self
    }

    /// Removes every rule and turns the key back on.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
        self.reject_key.store(false, Ordering::SeqCst);
    }

    /// The double refuses the service-role key (as after a key rotation)
    /// while `on`: `401 Invalid API key` from the gateway.
    pub fn reject_key(&self, on: bool) -> &Self {
        self.reject_key.store(on, Ordering::SeqCst);
        self
    }

    pub(crate) fn key_rejected(&self) -> bool {
        self.reject_key.load(Ordering::SeqCst)
    }

    /// The next `times` downloads of the object answer `429 Too Many
    /// Requests` with `Retry-After: <retry_after_secs>`.
    pub fn throttle(&self, bucket: &str, key: &str, times: u32, retry_after_secs: u64) -> &Self {
        self.add(Rule {
            target: object(bucket, key),
            fault: Fault::Status {
                status: 429,
                retry_after: Some(retry_after_secs),
            },
            times,
        })
    }

    /// Every `k`-th download request answers 429, `times` times.
    pub fn throttle_every(&self, k: u64, times: u32, retry_after_secs: u64) -> &Self {
        self.add(Rule {
            target: Target::EveryNth {
                route: Route::Download,
                n: k,
            },
            fault: Fault::Status {
                status: 429,
                retry_after: Some(retry_after_secs),
            },
            times,
        })
    }

    /// The next `times` downloads of the object answer `status` (500, 502,
    /// 503, 504…).
    pub fn fail(&self, bucket: &str, key: &str, status: u16, times: u32) -> &Self {
        self.add(Rule {
            target: object(bucket, key),
            fault: Fault::Status {
                status,
                retry_after: None,
            },
            times,
        })
    }

    /// The next `times` requests of `route` answer `status`.
    pub fn fail_route(&self, route: Route, status: u16, times: u32) -> &Self {
        self.add(Rule {
            target: Target::Route(route),
            fault: Fault::Status {
                status,
                retry_after: None,
            },
            times,
        })
    }

    /// The next `times` downloads of the object wait `delay` before their
    /// headers.
    pub fn delay_headers(&self, bucket: &str, key: &str, delay: Duration, times: u32) -> &Self {
        self.add(Rule {
            target: object(bucket, key),
            fault: Fault::DelayHeaders(delay),
            times,
        })
    }

    /// The next `times` downloads of the object trickle: `chunk` bytes
    /// every `interval`.
    pub fn trickle(
        &self,
        bucket: &str,
        key: &str,
        chunk: usize,
        interval: Duration,
        times: u32,
    ) -> &Self {
        self.add(Rule {
            target: object(bucket, key),
            fault: Fault::Trickle {
                chunk: chunk.max(1),
                interval,
            },
            times,
        })
    }

    /// The next `times` downloads of the object stop after `after` bytes
    /// although `Content-Length` announced them all.
    pub fn truncate(&self, bucket: &str, key: &str, after: u64, times: u32) -> &Self {
        self.add(Rule {
            target: object(bucket, key),
            fault: Fault::Truncate { after },
            times,
        })
    }

    /// Every listing (`list` and `list-v2`) waits `delay` before answering.
    pub fn slow_listing(&self, delay: Duration) -> &Self {
        for route in [Route::List, Route::ListV2] {
            self.add(Rule {
                target: Target::Route(route),
                fault: Fault::DelayHeaders(delay),
                times: Self::ALWAYS,
            });
        }
        self
    }

    /// Picks (and uses up) the faults for a request: `nth` is the request's
    /// number on its route, `object` the object a download asks for.
    pub(crate) fn decide(&self, route: Route, nth: u64, object: Option<(&str, &str)>) -> Decision {
        let mut rules = self.rules.lock().unwrap();
        let mut decision = Decision::default();
        let applies = |target: &Target| match target {
            Target::Object { bucket, key } => {
                route == Route::Download && object == Some((bucket.as_str(), key.as_str()))
            }
            Target::Route(r) => *r == route,
            Target::EveryNth { route: r, n } => *r == route && *n > 0 && nth.is_multiple_of(*n),
        };
        // Statuses and delays first: a request that gets a status has no
        // body for the body faults to use up.
        for pass in 0..2 {
            for rule in rules.iter_mut() {
                if rule.times == 0 || !applies(&rule.target) {
                    continue;
                }
                let used = match (&rule.fault, pass) {
                    (
                        Fault::Status {
                            status,
                            retry_after,
                        },
                        0,
                    ) if decision.status.is_none() => {
                        decision.status = Some((*status, *retry_after));
                        true
                    }
                    (Fault::DelayHeaders(d), 0) if decision.delay.is_none() => {
                        decision.delay = Some(*d);
                        true
                    }
                    (Fault::Trickle { chunk, interval }, 1)
                        if decision.trickle.is_none() && decision.status.is_none() =>
                    {
                        decision.trickle = Some((*chunk, *interval));
                        true
                    }
                    (Fault::Truncate { after }, 1)
                        if decision.truncate.is_none() && decision.status.is_none() =>
                    {
                        decision.truncate = Some(*after);
                        true
                    }
                    _ => false,
                };
                if used && rule.times != Self::ALWAYS {
                    rule.times -= 1;
                }
            }
        }
        decision
    }
}

fn object(bucket: &str, key: &str) -> Target {
    Target::Object {
        bucket: bucket.to_string(),
        key: key.to_string(),
    }
}

/// Downloads of one object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Downloads {
    /// Requests for it (faulted and refused ones included).
    pub requests: u64,
    /// Responses that began sending its bytes (200 or 206).
    pub started: u64,
    /// Responses whose last byte was handed to the connection.
    pub completed: u64,
    /// Body bytes handed to the connection.
    pub bytes: u64,
}

/// Counters of one double (`double.stats()`).
#[derive(Default)]
pub struct Stats {
    requests: Mutex<HashMap<Route, u64>>,
    downloads: Mutex<HashMap<(String, String), Downloads>>,
    rejected: AtomicU64,
    active: AtomicU64,
    max_active: AtomicU64,
    bytes_sent: AtomicU64,
}

impl Stats {
    /// Requests that reached `route` so far.
    pub fn requests(&self, route: Route) -> u64 {
        self.requests
            .lock()
            .unwrap()
            .get(&route)
            .copied()
            .unwrap_or(0)
    }

    /// Requests on every route.
    pub fn total_requests(&self) -> u64 {
        self.requests.lock().unwrap().values().sum()
    }

    /// Requests refused for their key (gateway 401 or Storage's JWT check).
    pub fn rejected_requests(&self) -> u64 {
        self.rejected.load(Ordering::SeqCst)
    }

    /// What happened to one object's downloads.
    pub fn downloads_of(&self, bucket: &str, key: &str) -> Downloads {
        self.downloads
            .lock()
            .unwrap()
            .get(&(bucket.to_string(), key.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// Every object that was asked for, with its counts (sorted).
    pub fn all_downloads(&self) -> Vec<((String, String), Downloads)> {
        let mut all: Vec<_> = self
            .downloads
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Downloads started, all objects.
    pub fn downloads_started(&self) -> u64 {
        self.downloads
            .lock()
            .unwrap()
            .values()
            .map(|d| d.started)
            .sum()
    }

    /// Downloads completed, all objects.
    pub fn downloads_completed(&self) -> u64 {
        self.downloads
            .lock()
            .unwrap()
            .values()
            .map(|d| d.completed)
            .sum()
    }

    /// Objects whose bytes were sent in full more than once.
    pub fn completed_more_than_once(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .downloads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, d)| d.completed > 1)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Bodies being sent now.
    pub fn concurrent_downloads(&self) -> u64 {
        self.active.load(Ordering::SeqCst)
    }

    /// The most bodies ever sent at once.
    pub fn max_concurrent_downloads(&self) -> u64 {
        self.max_active.load(Ordering::SeqCst)
    }

    /// Download body bytes handed to connections, all objects.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::SeqCst)
    }

    /// Sets every counter back to zero (the request numbers that
    /// [`Target::EveryNth`] counts included).
    pub fn reset(&self) {
        self.requests.lock().unwrap().clear();
        self.downloads.lock().unwrap().clear();
        self.rejected.store(0, Ordering::SeqCst);
        self.max_active
            .store(self.active.load(Ordering::SeqCst), Ordering::SeqCst);
        self.bytes_sent.store(0, Ordering::SeqCst);
    }

    /// Counts a request; returns its number on the route (from 1).
    pub(crate) fn count_request(&self, route: Route) -> u64 {
        let mut map = self.requests.lock().unwrap();
        let n = map.entry(route).or_insert(0);
        *n += 1;
        *n
    }

    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn with_object(&self, bucket: &str, key: &str, f: impl FnOnce(&mut Downloads)) {
        let mut map = self.downloads.lock().unwrap();
        f(map
            .entry((bucket.to_string(), key.to_string()))
            .or_default());
    }

    pub(crate) fn body_started(&self) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
    }

    pub(crate) fn body_ended(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn sent(&self, bucket: &str, key: &str, bytes: u64, completed: bool) {
        self.bytes_sent.fetch_add(bytes, Ordering::SeqCst);
        self.with_object(bucket, key, |d| {
            d.bytes += bytes;
            if completed {
                d.completed += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_wear_out_in_order() {
        let faults = Faults::default();
        faults.throttle("b", "k", 2, 3).fail("b", "k", 503, 1);
        let d = |n| faults.decide(Route::Download, n, Some(("b", "k")));
        assert_eq!(d(1).status, Some((429, Some(3))));
        assert_eq!(d(2).status, Some((429, Some(3))));
        assert_eq!(d(3).status, Some((503, None)));
        assert_eq!(d(4), Decision::default());
        assert_eq!(
            faults.decide(Route::Download, 5, Some(("b", "other"))),
            Decision::default()
        );
    }

    #[test]
    fn every_nth_and_body_faults() {
        let faults = Faults::default();
        faults.throttle_every(3, Faults::ALWAYS, 1);
        faults.truncate("b", "k", 10, 1);
        let statuses: Vec<_> = (1..=7)
            .map(|n| faults.decide(Route::Download, n, Some(("x", "y"))).status)
            .collect();
        assert_eq!(statuses.iter().filter(|s| s.is_some()).count(), 2);
        // A throttled request does not use the truncation up.
        assert_eq!(
            faults.decide(Route::Download, 9, Some(("b", "k"))).truncate,
            None
        );
        assert_eq!(
            faults
                .decide(Route::Download, 10, Some(("b", "k")))
                .truncate,
            Some(10)
        );
    }
}
