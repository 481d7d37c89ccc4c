//! Versioned endpoint sets with watchers: what every backend publishes into.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::endpoint::{Endpoint, EndpointSet};

/// Service names to their current [`EndpointSet`], each watchable.
#[derive(Debug, Default)]
pub struct Registry {
    services: RwLock<HashMap<String, watch::Sender<Arc<EndpointSet>>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `endpoints` for `service` (sorted, duplicates removed). The
    /// version grows only when the set changes, so watchers wake only then.
    /// Returns the set now current.
    pub fn publish(&self, service: &str, mut endpoints: Vec<Endpoint>) -> Arc<EndpointSet> {
        endpoints.sort();
        endpoints.dedup();
        let mut services = self.services.write().unwrap_or_else(|p| p.into_inner());
        match services.get(service) {
            Some(sender) => {
                sender.send_if_modified(|current| {
                    if current.endpoints == endpoints {
                        return false;
                    }
                    *current = Arc::new(EndpointSet {
                        version: current.version + 1,
                        endpoints,
                    });
                    true
                });
                sender.borrow().clone()
            }
            None => {
                let set = Arc::new(EndpointSet {
                    version: 1,
                    endpoints,
                });
                let (sender, _) = watch::channel(set.clone());
                services.insert(service.to_string(), sender);
                set
            }
        }
    }

    /// Forgets `service`; its watchers see the sender close.
    pub fn remove(&self, service: &str) {
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service);
    }

    /// The current set of `service`, if it was ever published.
    pub fn current(&self, service: &str) -> Option<Arc<EndpointSet>> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .map(|s| s.borrow().clone())
    }

    /// A watcher of `service`, if it was ever published.
    pub fn watch(&self, service: &str) -> Option<watch::Receiver<Arc<EndpointSet>>> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .map(|s| s.subscribe())
    }

    /// Every service name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_grow_only_on_change_and_watchers_wake() {
        let registry = Registry::new();
        let a = Endpoint::new("http://127.0.0.1:1");
        let b = Endpoint::new("http://127.0.0.1:2");
        assert_eq!(registry.publish("m", vec![a.clone()]).version, 1);
        let watcher = registry.watch("m").unwrap_or_else(|| panic!("published"));
        assert_eq!(
            registry.publish("m", vec![a.clone()]).version,
            1,
            "no change, same version"
        );
        assert!(!watcher.has_changed().unwrap_or(true));
        let set = registry.publish("m", vec![b.clone(), a.clone(), a.clone()]);
        assert_eq!(set.version, 2);
        assert_eq!(set.endpoints, vec![a, b], "sorted, deduplicated");
        assert!(watcher.has_changed().unwrap_or(false));
        assert_eq!(
            registry.publish("m", vec![]).endpoints.len(),
            0,
            "empty is valid"
        );
        registry.remove("m");
        assert!(registry.current("m").is_none());
    }
}
