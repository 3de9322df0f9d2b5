//! The fake API server through kube's own client, watcher and typed `Api`s.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use macp_auth_e2e::apiserver::FakeApiServer;
use serde_json::json;

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "data": data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap()
}

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]}
            }
        }
    }))
    .unwrap()
}

fn api_code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn create_get_list_with_selectors() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let created = api
        .create(&PostParams::default(), &cm("a", &[("k", "v")]))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.namespace().as_deref(), Some("default"));
    let got = api.get("a").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");

    let mut other = cm("b", &[]);
    other.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
    api.create(&PostParams::default(), &other).await.unwrap();
    let elsewhere: Api<ConfigMap> = Api::namespaced(server.client(), "elsewhere");
    elsewhere
        .create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();

    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(api.list(&ListParams::default()).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app=demo"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    let all: Api<ConfigMap> = Api::all(server.client());
    let listed = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(listed.clone()), ["a", "b", "c"]);
    assert_eq!(
        listed.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
}

#[tokio::test]
async fn errors_are_status_objects_with_codes() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    assert_eq!(api_code(api.get("missing").await), 404);
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    match api.create(&PostParams::default(), &cm("a", &[])).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
        }
        other => panic!("{other:?}"),
    }
    let stale = api.get("a").await.unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    match api.replace("a", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        api_code(api.delete("missing", &DeleteParams::default()).await),
        404
    );
    assert_eq!(
        api_code(
            api.patch("missing", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
        ),
        404
    );
    // Unknown resource types are 404 as well.
    let unknown = kube::api::ApiResource {
        group: "nope.io".into(),
        version: "v1".into(),
        api_version: "nope.io/v1".into(),
        kind: "Nope".into(),
        plural: "nopes".into(),
    };
    let dyn_api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(server.client(), "default", &unknown);
    assert_eq!(api_code(dyn_api.list(&ListParams::default()).await), 404);
    // Injected faults.
    server.fail_next_writes("configmaps", 1, 500);
    assert_eq!(
        api_code(
            api.patch("a", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
        ),
        500
    );
    api.patch("a", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap();
}

#[tokio::test]
async fn apply_is_idempotent_and_creates() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Secret> = Api::default_namespaced(server.client());
    let pp = PatchParams::apply("test-manager").force();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "labels": {"a": "1"}},
        "stringData": {"key": "value"},
    });
    let first = api.patch("s", &pp, &Patch::Apply(&secret)).await.unwrap();
    assert_eq!(first.data.as_ref().unwrap()["key"].0, b"value");
    let rv = first.resource_version();
    let writes_before = server.resource_version();
    let again = api.patch("s", &pp, &Patch::Apply(&secret)).await.unwrap();
    assert_eq!(
        again.resource_version(),
        rv,
        "unchanged apply keeps the resourceVersion"
    );
    assert_eq!(server.resource_version(), writes_before);

    // A dropped data key disappears (top-level fields are replaced).
    let changed = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s"},
        "stringData": {"other": "x"},
    });
    let third = api.patch("s", &pp, &Patch::Apply(&changed)).await.unwrap();
    let data = third.data.unwrap();
    assert!(!data.contains_key("key"));
    assert_eq!(data["other"].0, b"x");
    assert!(
        third.metadata.labels.unwrap_or_default().is_empty(),
        "label owned by the manager removed"
    );
}

#[tokio::test]
async fn merge_json_patch_and_generation() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Deployment> = Api::default_namespaced(server.client());
    let d = api
        .create(&PostParams::default(), &deployment("web", "img:1"))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "metadata change keeps generation"
    );
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(patched.spec.unwrap().replicas, Some(3));
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/replicas", "value": 3},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
    ]))
    .unwrap();
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(ops.clone()),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().replicas, Some(4));
    assert_eq!(patched.metadata.generation, Some(3));
    // The test op now fails: 422.
    assert_eq!(
        api_code(
            api.patch("web", &PatchParams::default(), &Patch::Json::<()>(ops))
                .await
        ),
        422
    );
}

#[tokio::test]
async fn status_subresource_is_isolated() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Deployment> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &deployment("web", "img:1"))
        .await
        .unwrap();
    let st = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}, "status": {"readyReplicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.as_ref().unwrap().ready_replicas, Some(2));
    assert_eq!(
        st.spec.as_ref().unwrap().replicas,
        Some(2),
        "status write ignores spec"
    );
    let main = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 0}})),
        )
        .await
        .unwrap();
    assert_eq!(
        main.status.unwrap().ready_replicas,
        Some(2),
        "main write ignores status"
    );
    let log = server.requests();
    let verbs: Vec<_> = log
        .iter()
        .map(|r| (r.verb.as_str(), r.resource.as_str()))
        .collect();
    assert_eq!(
        verbs,
        [
            ("create", "deployments"),
            ("patch", "deployments/status"),
            ("patch", "deployments")
        ]
    );
    assert_eq!(server.write_count(), 3);
    server.reset_log();
    api.get_status("web").await.unwrap();
    assert_eq!(server.count("get", "deployments/status"), 1);
    assert_eq!(server.write_count(), 0);
}

#[tokio::test]
async fn raw_watch_delivers_events_in_order() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    // A non-zero starting point: resourceVersion "0" means "from now" to a watch.
    api.create(&PostParams::default(), &cm("seed", &[]))
        .await
        .unwrap();
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    assert_ne!(rv, "0");
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(c) => seen.push(("ADDED", c.resource_version().unwrap())),
            WatchEvent::Modified(c) => seen.push(("MODIFIED", c.resource_version().unwrap())),
            WatchEvent::Deleted(c) => seen.push(("DELETED", c.resource_version().unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    let kinds: Vec<_> = seen.iter().map(|s| s.0).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    let rvs: Vec<u64> = seen.iter().map(|s| s.1.parse().unwrap()).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");

    // Old resource versions after compaction: 410 as a watch ERROR event.
    server.compact_history();
    let mut stale = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match stale.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("{other:?}"),
    }
}

async fn next_event<K>(
    stream: &mut (impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) -> watcher::Event<K> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watcher event in time")
        .expect("stream open")
        .expect("no watcher error")
}

/// A watcher's initial list holding the one object `name`.
async fn expect_initial_list<K: Resource + std::fmt::Debug>(
    stream: &mut (impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
    name: &str,
) {
    assert!(matches!(next_event(stream).await, watcher::Event::Init));
    match next_event(stream).await {
        watcher::Event::InitApply(o) => assert_eq!(o.meta().name.as_deref(), Some(name)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next_event(stream).await, watcher::Event::InitDone));
}

#[tokio::test]
async fn kube_runtime_watcher_sees_create_modify_delete() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &cm("pre", &[]))
        .await
        .unwrap();
    let all: Api<ConfigMap> = Api::all(server.client());
    let mut stream = watcher(all, watcher::Config::default()).boxed();
    expect_initial_list(&mut stream, "pre").await;
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    match next_event(&mut stream).await {
        watcher::Event::Apply(c) => assert_eq!(c.name_any(), "a"),
        other => panic!("{other:?}"),
    }
    match next_event(&mut stream).await {
        watcher::Event::Apply(c) => assert_eq!(c.data.unwrap()["k"], "v"),
        other => panic!("{other:?}"),
    }
    match next_event(&mut stream).await {
        watcher::Event::Delete(c) => assert_eq!(c.name_any(), "a"),
        other => panic!("{other:?}"),
    }
    // After compaction the watcher relists and carries on.
    server.compact_history();
    api.create(&PostParams::default(), &cm("after", &[]))
        .await
        .unwrap();
    let mut names = Vec::new();
    while !names.contains(&"after".to_string()) {
        // Errors (the 410 Gone that forces the relist) are expected here.
        if let Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) =
            tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap()
                .unwrap()
        {
            names.push(c.name_any());
        }
    }
}

/// Metadata-only clients (`Api<PartialObjectMeta<K>>`, what the operator
/// watches its Secrets, Deployments and Pods with) get the metadata alone,
/// as the real server sends it: no Secret data reaches them.
#[tokio::test]
async fn metadata_only_list_watch_and_get_carry_no_content() {
    let server = FakeApiServer::start().await.unwrap();
    let secrets: Api<Secret> = Api::default_namespaced(server.client());
    let secret = |name: &str, value: &str| -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"app": "demo"}},
            "stringData": {"key": value},
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("pre", "one"))
        .await
        .unwrap();
    let meta: Api<PartialObjectMeta<Secret>> = Api::default_namespaced(server.client());
    let is_partial = |p: &PartialObjectMeta<Secret>| {
        p.types
            .as_ref()
            .map(|t| (t.api_version.as_str(), t.kind.as_str()))
            == Some(("meta.k8s.io/v1", "PartialObjectMetadata"))
    };
    let got = meta.get("pre").await.unwrap();
    assert!(is_partial(&got), "{got:?}");
    assert_eq!(got.labels()["app"], "demo");
    let listed = meta.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(is_partial(&listed.items[0]), "{listed:?}");

    let mut stream = watcher(meta, watcher::Config::default()).boxed();
    expect_initial_list(&mut stream, "pre").await;
    let written = secrets
        .replace("pre", &PostParams::default(), &{
            let mut s = secret("pre", "two");
            s.metadata.resource_version = got.resource_version();
            s
        })
        .await
        .unwrap();
    match next_event(&mut stream).await {
        watcher::Event::Apply(p) => {
            assert!(is_partial(&p), "{p:?}");
            assert_eq!(p.resource_version(), written.resource_version());
        }
        other => panic!("{other:?}"),
    }
    // The raw watch line itself holds no data.
    let raw = server.client();
    let request =
        http::Request::get("/api/v1/namespaces/default/secrets?watch=true&resourceVersion=0")
            .header(
                "Accept",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            )
            .body(Vec::new())
            .unwrap();
    let reader = raw.request_stream(request).await.unwrap();
    let mut lines = futures::AsyncBufReadExt::lines(Box::pin(reader));
    let text = lines.next().await.unwrap().unwrap();
    assert!(text.contains("PartialObjectMetadata"), "{text}");
    assert!(!text.contains("\"data\""), "{text}");
}

#[tokio::test]
async fn streaming_list_watcher_works() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &cm("pre", &[]))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitApply(_)
    ));
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Apply(_)
    ));
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let server = FakeApiServer::start().await.unwrap();
    let deps: Api<Deployment> = Api::default_namespaced(server.client());
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let d = deps
        .create(&PostParams::default(), &deployment("web", "img"))
        .await
        .unwrap();
    let owner = OwnerReference {
        api_version: Deployment::api_version(&()).to_string(),
        kind: Deployment::kind(&()).to_string(),
        name: d.name_any(),
        uid: d.uid().unwrap(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web-1"}})).unwrap();
    pod.metadata.owner_references = Some(vec![owner]);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    deps.delete("web", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(pods.get("web-1").await), 404);
    assert!(server.get("", "pods", Some("default"), "web-1").is_none());
}

#[tokio::test]
async fn direct_store_access_is_visible_to_clients() {
    let server = FakeApiServer::start().await.unwrap();
    server.create_as(&cm("direct", &[("a", "b")])).unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    assert_eq!(api.get("direct").await.unwrap().data.unwrap()["a"], "b");
    let deps: Api<Deployment> = Api::default_namespaced(server.client());
    deps.create(&PostParams::default(), &deployment("x", "i"))
        .await
        .unwrap();
    let d: Deployment = server.get_as(Some("default"), "x").unwrap().unwrap();
    assert_eq!(d.name_any(), "x");
    server
        .modify_as::<Deployment>(Some("default"), "x", |d| {
            d.status.get_or_insert_with(Default::default).ready_replicas = Some(1);
        })
        .unwrap();
    assert_eq!(
        deps.get("x").await.unwrap().status.unwrap().ready_replicas,
        Some(1)
    );
    assert_eq!(server.list_as::<ConfigMap>(None).unwrap().len(), 1);
    server
        .delete_as::<ConfigMap>(Some("default"), "direct")
        .unwrap();
    assert!(
        server
            .get_as::<ConfigMap>(Some("default"), "direct")
            .unwrap()
            .is_none()
    );
    assert_eq!(server.requests().len(), 3, "direct access is not logged");
}

#[tokio::test]
async fn pause_hangs_requests_until_resume() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    server.pause();
    let pending =
        tokio::time::timeout(Duration::from_millis(300), api.list(&ListParams::default())).await;
    assert!(pending.is_err(), "request hangs while paused");
    server.resume();
    api.list(&ListParams::default()).await.unwrap();
}

// ------------------------------------------------------------ real-server behaviour

/// Server-side apply tracks ownership per manager: a key or list item that
/// another manager owns survives an apply that drops it; `managedFields` is
/// rendered; an unforced apply over another manager's value is a 409.
#[tokio::test]
async fn apply_keeps_what_other_managers_own() {
    let server = FakeApiServer::start().await.unwrap();
    let secrets: Api<Secret> = Api::default_namespaced(server.client());
    let created: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s"},
        "stringData": {"theirs": "t", "shared": "v"}
    }))
    .unwrap();
    let pp = PostParams {
        field_manager: Some("kubectl-create".into()),
        ..PostParams::default()
    };
    secrets.create(&pp, &created).await.unwrap();
    let op = PatchParams::apply("op").force();
    let apply = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": data});
    secrets
        .patch(
            "s",
            &op,
            &Patch::Apply(&apply(json!({"shared": "v", "mine": "m"}))),
        )
        .await
        .unwrap();
    let s = secrets
        .patch("s", &op, &Patch::Apply(&apply(json!({"shared": "v"}))))
        .await
        .unwrap();
    let keys: Vec<_> = s.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["shared", "theirs"], "mine dropped, theirs kept");
    let managers: Vec<_> = s
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.operation.unwrap()))
        .collect();
    assert_eq!(
        managers,
        [
            ("kubectl-create".to_string(), "Update".to_string()),
            ("op".to_string(), "Apply".to_string())
        ]
    );
    // Only an update removes what someone else owns.
    let mut exact = secrets.get("s").await.unwrap();
    exact.data.as_mut().unwrap().remove("theirs");
    let s = secrets
        .replace("s", &PostParams::default(), &exact)
        .await
        .unwrap();
    assert_eq!(s.data.unwrap().len(), 1);

    // Keyed lists: the injector's env var and container stay when the owner re-applies.
    let deployments: Api<Deployment> = Api::default_namespaced(server.client());
    let mut d = deployment("d", "img:1");
    deployments
        .patch("d", &op, &Patch::Apply(&d))
        .await
        .unwrap();
    let inject = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "c", "env": [{"name": "X", "value": "1"}]},
            {"name": "side", "image": "s:1"}]}}}});
    deployments
        .patch("d", &PatchParams::apply("injector"), &Patch::Apply(&inject))
        .await
        .unwrap();
    d.spec.as_mut().unwrap().replicas = Some(3);
    let got = deployments
        .patch("d", &op, &Patch::Apply(&d))
        .await
        .unwrap();
    let pod = got.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers.len(), 2);
    assert_eq!(pod.containers[0].env.as_ref().unwrap()[0].name, "X");
    assert_eq!(pod.containers[0].image.as_deref(), Some("img:1"));
    // The injector may not take the image without force.
    let steal = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "evil:1"}]}}}});
    match deployments
        .patch("d", &PatchParams::apply("injector"), &Patch::Apply(&steal))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert!(s.message.contains("conflict with \"op\""), "{}", s.message);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Object names and label values are validated like the real server (422).
#[tokio::test]
async fn invalid_names_and_label_values_are_422() {
    let server = FakeApiServer::start().await.unwrap();
    let svc: Api<k8s_openapi::api::core::v1::Service> = Api::default_namespaced(server.client());
    for bad in ["a.b", "1auth"] {
        let s = serde_json::from_value(json!({"metadata": {"name": bad}})).unwrap();
        match svc.create(&PostParams::default(), &s).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{bad}");
                assert!(e.message.contains("DNS-1035"), "{}", e.message);
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut c = cm("x", &[]);
    c.metadata.labels = Some([("app".to_string(), "v".repeat(64))].into());
    assert_eq!(api_code(cms.create(&PostParams::default(), &c).await), 422);
    // A ConfigMap may have dots in its name (DNS-1123 subdomain).
    cms.create(&PostParams::default(), &cm("a.b", &[]))
        .await
        .unwrap();
}

/// Quantities are stored in canonical form and defaults are filled in.
#[tokio::test]
async fn quantities_are_normalised_and_defaults_filled() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Deployment> = Api::default_namespaced(server.client());
    let mut d = deployment("q", "img:1");
    let c = &mut d
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    c.resources = Some(
        serde_json::from_value(json!({"requests": {"cpu": "0.5", "memory": "2048Mi"}})).unwrap(),
    );
    let got = api.create(&PostParams::default(), &d).await.unwrap();
    let spec = got.spec.unwrap();
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(
        (req["cpu"].0.as_str(), req["memory"].0.as_str()),
        ("500m", "2Gi")
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        c.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
}

/// A watch delay makes every change arrive late, as from a lagging cache.
#[tokio::test]
async fn watch_delay_delivers_changes_late() {
    let server = FakeApiServer::start().await.unwrap();
    server.set_watch_delay(Duration::from_millis(700));
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let start = tokio::time::Instant::now();
    api.create(&PostParams::default(), &cm("late", &[]))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, WatchEvent::Added(_)), "{ev:?}");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(700), "{took:?}");
    // Reads are not delayed.
    assert!(api.get("late").await.is_ok());
}

/// RBAC: an authenticated client may do what its grants allow, in their
/// scope, and gets the real 403 Status otherwise; the admin client is never checked.
#[tokio::test]
async fn rbac_answers_forbidden_with_the_real_status() {
    use macp_auth_e2e::apiserver::{OPERATOR_USER, PolicyRule, RbacScope};
    let server = FakeApiServer::start().await.unwrap();
    server.enforce_rbac(
        [PolicyRule::new(
            "",
            "configmaps",
            &["get", "list", "create"],
        )],
        RbacScope::Namespace("auth".into()),
    );
    let op = server.operator_client().unwrap();
    let in_ns: Api<ConfigMap> = Api::namespaced(op.clone(), "auth");
    in_ns
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    assert!(in_ns.get("a").await.is_ok());
    /// A request the namespaced rule list does not grant, and the 403's message.
    struct Refused {
        name: &'static str,
        result: Result<ConfigMap, kube::Error>,
        message: String,
    }
    let cases = [
        Refused {
            name: "a delete, which the rules do not grant",
            result: in_ns
                .delete("a", &DeleteParams::default())
                .await
                .map(|_| cm("", &[])),
            message: format!(
                "configmaps \"a\" is forbidden: User \"{OPERATOR_USER}\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"auth\""
            ),
        },
        Refused {
            name: "a get in a namespace not granted",
            result: Api::<ConfigMap>::namespaced(op.clone(), "other")
                .get("a")
                .await,
            message: format!(
                "configmaps \"a\" is forbidden: User \"{OPERATOR_USER}\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"other\""
            ),
        },
    ];
    for Refused {
        name,
        result,
        message,
    } in cases
    {
        match result {
            Err(kube::Error::Api(s)) => {
                assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{name}");
                assert_eq!(s.message, message, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let all: Api<ConfigMap> = Api::all(op);
    match all.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(
            s.message,
            format!(
                "configmaps is forbidden: User \"{OPERATOR_USER}\" cannot list resource \"configmaps\" in API group \"\" at the cluster scope"
            )
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.forbidden().len(), 3);
    // The admin client is not checked.
    let admin: Api<ConfigMap> = Api::namespaced(server.client(), "other");
    admin
        .create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
}

/// The pod stand-in follows Deployments through `changed_since`: the objects
/// added or modified after a resource version, each once at its latest
/// version, none deleted since, and `None` once the history is compacted
/// (the caller lists instead).
#[tokio::test]
async fn changed_since_names_what_changed_after_a_version_and_nothing_older() {
    let server = FakeApiServer::start().await.unwrap();
    let cm = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default"}, "data": {"v": "0"}})
    };
    for name in ["old", "edited", "removed"] {
        server.create("", "configmaps", cm(name)).unwrap();
    }
    server
        .create(
            "",
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "other-kind", "namespace": "default"}}),
        )
        .unwrap();
    let since = server.resource_version();

    for v in ["1", "2"] {
        server
            .modify("", "configmaps", Some("default"), "edited", |c| {
                c["data"]["v"] = json!(v);
            })
            .unwrap();
    }
    server.create("", "configmaps", cm("new")).unwrap();
    // Changed, then deleted: it is no change to follow.
    server
        .modify("", "configmaps", Some("default"), "removed", |c| {
            c["data"]["v"] = json!("1");
        })
        .unwrap();
    server
        .delete("", "configmaps", Some("default"), "removed")
        .unwrap();
    server
        .modify("", "secrets", Some("default"), "other-kind", |s| {
            s["data"] = json!({"k": "dg=="});
        })
        .unwrap();

    let (changed, now) = server.changed_since("", "configmaps", since).unwrap();
    let mut seen: Vec<(String, String)> = changed
        .iter()
        .map(|c| {
            (
                c["metadata"]["name"].as_str().unwrap().to_string(),
                c["data"]["v"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![("edited".into(), "2".into()), ("new".into(), "0".into())]
    );
    assert_eq!(now, server.resource_version());
    let (nothing, _) = server.changed_since("", "configmaps", now).unwrap();
    assert!(nothing.is_empty());

    server.compact_history();
    assert!(server.changed_since("", "configmaps", since).is_none());
}
