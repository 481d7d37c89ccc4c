//! Choosing one of a service's endpoints for a call.
//!
//! [`order`] ranks a set for one attempt: endpoints the call has not tried
//! yet come before ones it has (a retry goes elsewhere when it can), and
//! among the untried the balancer's choice comes first. The caller walks the
//! ranking until an endpoint's breaker admits the call.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::endpoint::Endpoint;

/// How a call picks one of a service's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balancer {
    /// Two endpoints at random; the one with fewer calls in flight wins
    /// (as in Finagle and Envoy: near-best spread without global state, and
    /// a slow replica soon gets less).
    #[default]
    PowerOfTwoChoices,
    /// Each endpoint in turn.
    RoundRobin,
}

/// Ranks `endpoints` for one attempt. `load` gives an endpoint's calls in
/// flight (power of two choices); `turn` is the service's round-robin
/// counter.
pub fn order<'e>(
    balancer: Balancer,
    endpoints: &'e [Endpoint],
    tried: &[Endpoint],
    turn: &AtomicUsize,
    load: impl Fn(&Endpoint) -> usize,
) -> Vec<&'e Endpoint> {
    // One endpoint: nothing to rank (the common case of a single replica).
    if let [only] = endpoints {
        return vec![only];
    }
    let (mut fresh, retried): (Vec<&Endpoint>, Vec<&Endpoint>) =
        endpoints.iter().partition(|e| !tried.contains(e));
    match balancer {
        Balancer::RoundRobin => {
            if !fresh.is_empty() {
                let start = turn.fetch_add(1, Ordering::Relaxed) % fresh.len();
                fresh.rotate_left(start);
            }
        }
        Balancer::PowerOfTwoChoices => {
            if fresh.len() >= 2 {
                let a = fastrand::usize(..fresh.len());
                let mut b = fastrand::usize(..fresh.len() - 1);
                if b >= a {
                    b += 1;
                }
                let best = if load(fresh[b]) < load(fresh[a]) {
                    b
                } else {
                    a
                };
                fresh.swap(0, best);
            }
        }
    }
    fresh.into_iter().chain(retried).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::new(format!("http://127.0.0.1:{}", 1000 + i)))
            .collect()
    }

    #[test]
    fn untried_first_then_tried() {
        let all = endpoints(3);
        let turn = AtomicUsize::new(0);
        for balancer in [Balancer::RoundRobin, Balancer::PowerOfTwoChoices] {
            let ranked = order(balancer, &all, &all[..2], &turn, |_| 0);
            assert_eq!(
                ranked[0], &all[2],
                "{balancer:?}: the untried endpoint first"
            );
            assert_eq!(ranked.len(), 3);
        }
    }

    #[test]
    fn round_robin_takes_turns() {
        let all = endpoints(3);
        let turn = AtomicUsize::new(0);
        let firsts: Vec<_> = (0..6)
            .map(|_| {
                order(Balancer::RoundRobin, &all, &[], &turn, |_| 0)[0]
                    .url
                    .clone()
            })
            .collect();
        assert_eq!(
            firsts[..3],
            [all[0].url.clone(), all[1].url.clone(), all[2].url.clone()]
        );
        assert_eq!(firsts[3..], firsts[..3]);
    }

    #[test]
    fn two_choices_avoid_the_loaded_endpoint() {
        let all = endpoints(2);
        let turn = AtomicUsize::new(0);
        // With two endpoints both are always drawn: the idle one wins.
        for _ in 0..100 {
            let ranked = order(Balancer::PowerOfTwoChoices, &all, &[], &turn, |e| {
                usize::from(e == &all[0]) * 10
            });
            assert_eq!(ranked[0], &all[1]);
        }
        // With many, the most loaded one is never first.
        let many = endpoints(10);
        for _ in 0..500 {
            let ranked = order(Balancer::PowerOfTwoChoices, &many, &[], &turn, |e| {
                if e == &many[0] { 99 } else { 0 }
            });
            assert_ne!(ranked[0], &many[0]);
        }
    }
}
