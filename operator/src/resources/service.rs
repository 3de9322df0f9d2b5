//! The ClusterIP Service `<name>` in front of the pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT_NAME, MINT_PORT_NAME, Owner, selector_labels};
use crate::crd::MacpAuthSpec;

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub(crate) fn service(owner: &Owner, spec: &MacpAuthSpec) -> Service {
    let mut ports = vec![service_port(HTTP_PORT_NAME, spec.port)];
    if let Some(mint_port) = spec.mint_port {
        ports.push(service_port(MINT_PORT_NAME, mint_port));
    }
    Service {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&owner.name)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{mauth, owner};
    use super::*;

    #[test]
    fn service_selects_the_pods_on_the_spec_port() {
        let spec = mauth(serde_json::json!({"port": 4000})).spec;
        let s = service(&owner(), &spec).spec.unwrap();
        assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(s.ports.as_ref().unwrap()[0].port, 4000);
        assert_eq!(s.selector.unwrap(), selector_labels("prod"));
    }
}
