//! Interoperability with clients nobody here wrote: skopeo (containers/image, the library
//! behind podman and buildah) and the `oci-client` crate.

mod common;

use std::process::Command;

use common::images::{self, OCI_INDEX, OCI_MANIFEST};
use common::{Backend, TestEnv, sha256};
use serde_json::Value;

backend_tests!(
    skopeo_round_trips_a_multiarch_image,
    oci_client_push_pull_and_referrers
);

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run skopeo ({e}): install it (apt-get install skopeo); .ci/run does")
        });
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn skopeo_round_trips_a_multiarch_image(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let host = s.url.trim_start_matches("http://").to_string();
    let image = images::multiarch(
        OCI_INDEX,
        500,
        &["linux/amd64", "linux/arm64"],
        2,
        600_000,
        &[501],
    );
    let src = env.dir.path().join("layout-in");
    images::write_layout(&src, "v1", &image);

    let dest = format!("docker://{host}/interop/multi:v1");
    let src_ref = format!("oci:{}:v1", src.display());
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src_ref,
        &dest,
    ]);
    // What skopeo pushed is what wharf serves.
    s.client.pull_and_verify("interop/multi", "v1").await;
    let r = s.client.get("/v2/interop/multi/manifests/v1").await;
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        image.digest()
    );

    // And back out again: the same index digest and every blob.
    let out = env.dir.path().join("layout-out");
    let out_ref = format!("oci:{}:v1", out.display());
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest,
        &out_ref,
    ]);
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str().unwrap(),
        image.digest()
    );
    for blob in image
        .blobs
        .iter()
        .chain(image.children.iter().map(|(_, c)| c))
    {
        let d = sha256(blob);
        let path = out
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        assert_eq!(std::fs::read(&path).unwrap(), *blob, "{d}");
    }

    // skopeo copies between repositories of the same registry with mounts.
    let dest2 = format!("docker://{host}/interop/copy:v1");
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &dest,
        &dest2,
    ]);
    s.client.pull_and_verify("interop/copy", "v1").await;
    skopeo(&[
        "delete",
        "--tls-verify=false",
        &format!("docker://{host}/interop/copy@{}", image.digest()),
    ]);
    assert_eq!(
        s.client.get("/v2/interop/copy/manifests/v1").await.status(),
        404
    );
    s.client.pull_and_verify("interop/multi", "v1").await;
}

async fn oci_client_push_pull_and_referrers(b: Backend) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};

    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let host = s.url.trim_start_matches("http://").to_string();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let reference: Reference = format!("{host}/crate/client:v1").parse().unwrap();
    let layers = vec![
        ImageLayer::oci_v1_gzip(images::layer(600, 3_000_000), None),
        ImageLayer::oci_v1_gzip(images::layer(601, 10_000), None),
    ];
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    client
        .push(
            &reference,
            &layers,
            config.clone(),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("oci-client push");

    let pulled = client
        .pull(
            &reference,
            &RegistryAuth::Anonymous,
            vec![oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE],
        )
        .await
        .expect("oci-client pull");
    // The crate downloads layers concurrently and returns them in completion order.
    let mut got: Vec<String> = pulled.layers.iter().map(|l| sha256(&l.data)).collect();
    let mut want: Vec<String> = layers.iter().map(|l| sha256(&l.data)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(pulled.config.data, config.data);
    s.client.pull_and_verify("crate/client", "v1").await;

    // A referrer pushed over the raw API is found by the crate's referrers call.
    let subject = s
        .client
        .get("/v2/crate/client/manifests/v1")
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let sig = images::referrer("application/vnd.example.sig", OCI_MANIFEST, &subject, 7);
    s.client
        .push_image("crate/client", &sig.digest(), &sig)
        .await;
    let by_digest: Reference = format!("{host}/crate/client@{}", sha256(&subject))
        .parse()
        .unwrap();
    let index = client
        .pull_referrers(&by_digest, None)
        .await
        .expect("referrers");
    assert_eq!(index.manifests.len(), 1);
    assert_eq!(index.manifests[0].digest, sig.digest());
    assert_eq!(
        index.manifests[0].artifact_type.as_deref(),
        Some("application/vnd.example.sig")
    );
}
