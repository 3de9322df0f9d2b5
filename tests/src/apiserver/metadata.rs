//! Metadata-only answers (`Accept: application/json;as=PartialObjectMetadata;
//! g=meta.k8s.io;v=v1`, and `as=PartialObjectMetadataList` for lists), as
//! metadata-only clients ask for them: kube's `metadata_watcher`, client-go's
//! metadata informers. The real server answers with each object's whole
//! `metadata` (managed fields included) and nothing else.

use serde_json::{Value, json};

const GROUP_VERSION: &str = "meta.k8s.io/v1";

/// Whether `accept` names `as=<kind>` in meta.k8s.io (v1 or v1beta1) for JSON.
pub fn accepts_as(accept: &str, kind: &str) -> bool {
    let wanted = format!("as={kind}");
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.first() == Some(&"application/json")
            && params.contains(&wanted.as_str())
            && params.contains(&"g=meta.k8s.io")
            && (params.contains(&"v=v1") || params.contains(&"v=v1beta1"))
    })
}

/// Whether the client asked for metadata only (a single object, a list or
/// a watch: kube sends the list form for lists, the single form for watches).
pub fn wants_metadata(accept: &str) -> bool {
    accepts_as(accept, "PartialObjectMetadata") || accepts_as(accept, "PartialObjectMetadataList")
}

/// `obj` reduced to its metadata.
pub fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": GROUP_VERSION,
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A list of `items` reduced to their metadata, at resourceVersion `rv`.
pub fn partial_list<'a>(items: impl IntoIterator<Item = &'a Value>, rv: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": GROUP_VERSION,
        "metadata": {"resourceVersion": rv},
        "items": items.into_iter().map(partial).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_metadata_requests_are_recognised_and_others_are_not() {
        assert!(wants_metadata(
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
        ));
        assert!(wants_metadata(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        ));
        assert!(wants_metadata(
            "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, \
             application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1"
        ));
        assert!(!wants_metadata("application/json"));
        assert!(!wants_metadata(
            "application/json;as=Table;g=meta.k8s.io;v=v1"
        ));
        assert!(!wants_metadata(
            "application/json;as=PartialObjectMetadata;g=apps;v=v1"
        ));
    }

    #[test]
    fn only_the_metadata_is_left() {
        let obj = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "resourceVersion": "7", "managedFields": [{"manager": "m"}]},
            "data": {"k": "c2VjcmV0"},
        });
        assert_eq!(
            partial(&obj),
            json!({
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"name": "s", "resourceVersion": "7", "managedFields": [{"manager": "m"}]},
            })
        );
        let list = partial_list([&obj], "9");
        assert_eq!(list["kind"], "PartialObjectMetadataList");
        assert_eq!(list["metadata"]["resourceVersion"], "9");
        assert_eq!(list["items"][0], partial(&obj));
    }
}
