//! Stream tickets: how a browser's `EventSource`, which cannot send an
//! `Authorization` header, opens its user's output stream.
//!
//! An authenticated `POST /output/ticket` gets a random ticket bound to the
//! caller's user for a short time; `GET /output/stream?ticket=…` is then
//! that user's stream. A ticket stays valid until it expires (not one use):
//! `EventSource` reconnects by itself with the same URL, and each reconnect
//! must work. It names a user and nothing else, so a leaked ticket opens
//! only that user's stream, only briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cortex_service::ServiceError;
use tokio::time::Instant;

/// Tickets live at once; past it new ones are refused until some expire.
pub const MAX_TICKETS: usize = 10_000;

/// The tickets issued and not yet expired.
#[derive(Clone)]
pub struct Tickets {
    ttl: Duration,
    live: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Tickets {
    /// Tickets valid for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A new ticket for `user_id`, and how long it is valid.
    ///
    /// # Errors
    /// 503 `unavailable` when [`MAX_TICKETS`] are live.
    pub fn issue(&self, user_id: &str) -> Result<(String, Duration), ServiceError> {
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.len() >= MAX_TICKETS {
            live.retain(|_, (_, expires)| *expires > now);
        }
        if live.len() >= MAX_TICKETS {
            return Err(ServiceError::unavailable(
                "too many stream tickets are live; retry in a minute",
            ));
        }
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        live.insert(ticket.clone(), (user_id.to_string(), now + self.ttl));
        Ok((ticket, self.ttl))
    }

    /// The user `ticket` was issued to, while it is valid.
    pub fn user_of(&self, ticket: &str) -> Option<String> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get(ticket) {
            Some((user, expires)) if *expires > Instant::now() => Some(user.clone()),
            Some(_) => {
                live.remove(ticket);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_ticket_names_its_user_until_it_expires() {
        let tickets = Tickets::new(Duration::from_secs(60));
        let (ticket, ttl) = tickets.issue("alice").unwrap();
        assert_eq!(ttl, Duration::from_secs(60));
        assert_eq!(ticket.len(), 64);
        assert_eq!(tickets.user_of(&ticket).as_deref(), Some("alice"));
        // Reusable while valid: EventSource reconnects with the same URL.
        assert_eq!(tickets.user_of(&ticket).as_deref(), Some("alice"));
        assert_eq!(tickets.user_of("not-a-ticket"), None);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(tickets.user_of(&ticket), None);
    }

    #[tokio::test(start_paused = true)]
    async fn tickets_are_bounded() {
        let tickets = Tickets::new(Duration::from_secs(1));
        for _ in 0..MAX_TICKETS {
            tickets.issue("u").unwrap();
        }
        assert!(tickets.issue("u").is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(tickets.issue("u").is_ok());
    }
}
