//! The controllers' watch caches of the owned Services and ConfigMaps, which
//! a round reads instead of the API server.
//!
//! Why these two and nothing else: neither takes part in a rotation's order
//! (the keys live in the Secret, the template hash in the Deployment, and
//! which pods serve what is listed fresh), so a cache that is behind cannot
//! break an invariant of docs/architecture.md. It can only be wrong in two
//! ways, and both are harmless:
//! - it shows drift that the live object no longer has: the round then reads
//!   the live object, finds it matching, and writes nothing;
//! - it shows a match while the live object has drifted since: the drift's
//!   own watch event is stored in the cache before it triggers a round (a
//!   reflector stores each event before the controller sees it), and that
//!   round repairs it.
//!
//! So an unchanged Service and ConfigMap cost a round no request; in a
//! rotation storm that is two reads of the seven a round made.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

/// The caches of every watched scope (one per namespace, or one for all).
#[derive(Default)]
pub struct WatchCaches {
    services: Vec<Store<Service>>,
    config_maps: Vec<Store<ConfigMap>>,
}

impl WatchCaches {
    /// Adds the caches of one scope's controller.
    pub(crate) fn add_scope(&mut self, services: Store<Service>, config_maps: Store<ConfigMap>) {
        self.services.push(services);
        self.config_maps.push(config_maps);
    }

    /// The cached Service `name` of `namespace`, if any scope holds it.
    pub(crate) fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        find(&self.services, namespace, name)
    }

    /// The cached ConfigMap `name` of `namespace`, if any scope holds it.
    pub(crate) fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        find(&self.config_maps, namespace, name)
    }
}

fn find<K>(stores: &[Store<K>], namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let key = ObjectRef::<K>::new(name).within(namespace);
    stores.iter().find_map(|s| s.get(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn service(ns: &str, name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn an_object_is_found_in_whichever_scope_holds_it_and_only_by_its_namespace() {
        let mut caches = WatchCaches::default();
        assert!(caches.service("a", "auth").is_none(), "no scope yet");
        for ns in ["a", "b"] {
            let (reader, mut writer) = store::<Service>();
            writer.apply_watcher_event(&Event::Apply(service(ns, "auth")));
            let (cm_reader, _cm_writer) = store::<ConfigMap>();
            caches.add_scope(reader, cm_reader);
        }
        let found = caches.service("b", "auth").expect("in scope b");
        assert_eq!(found.metadata.namespace.as_deref(), Some("b"));
        assert!(caches.service("c", "auth").is_none());
        assert!(caches.service("a", "other").is_none());
        assert!(caches.config_map("a", "auth").is_none());
    }
}
