//! Interoperability with clients nobody here wrote: skopeo (containers/image, the library
//! behind podman and buildah) and the `oci-client` crate.

mod common;

use std::process::Command;

use common::images::{self, OCI_INDEX, OCI_MANIFEST};
use common::{Backend, TestEnv, sha256};
use serde_json::Value;

backend_tests!(
    skopeo_round_trips_a_multiarch_image,
    oci_client_push_pull_and_referrers,
    skopeo_over_tls_with_credentials,
);

fn skopeo(args: &[&str]) {
    let out = skopeo_output(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn skopeo_output(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(args)
        .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run skopeo ({e}): install it (apt-get install skopeo); .ci/run does")
        })
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

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in `dir/<name>-ca.crt` and a server certificate for 127.0.0.1 it signed.
fn make_ca_and_server_cert(dir: &std::path::Path, name: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} CA"),
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &format!("{name}-server.key"),
            "-out",
            &format!("{name}-server.csr"),
        ],
    );
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}-server.csr"),
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext",
            "-out",
            &format!("{name}-server.crt"),
        ],
    );
}

fn curl_status(url: &str, ca: &std::path::Path) -> Option<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .args(["-u", "alice:secret", url])
        .output()
        .expect("run curl");
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).parse().ok()
}

/// skopeo pushes and pulls over HTTPS, verifying wharf's certificate against a CA it was
/// given (`--cert-dir`), with Basic credentials (`--creds`). A renewed certificate is served
/// without a restart.
async fn skopeo_over_tls_with_credentials(b: Backend) {
    let env = TestEnv::new(b).await;
    let dir = env.dir.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_server_cert(&dir, "one");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::copy(dir.join("one-server.crt"), &cert).unwrap();
    std::fs::copy(dir.join("one-server.key"), &key).unwrap();
    let certs = env.dir.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(dir.join("one-ca.crt"), certs.join("ca.crt")).unwrap();
    let htpasswd = env.dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("alice:{}\n", bcrypt::hash("secret", 4).unwrap()),
    )
    .unwrap();

    let s = env
        .start_with(&[
            ("REGISTRY_HTTP_TLS_CERTIFICATE", cert.to_str().unwrap()),
            ("REGISTRY_HTTP_TLS_KEY", key.to_str().unwrap()),
            ("REGISTRY_AUTH_HTPASSWD_PATH", htpasswd.to_str().unwrap()),
        ])
        .await;
    let host = s.url.trim_start_matches("http://").to_string();
    let image = images::multiarch(
        OCI_INDEX,
        510,
        &["linux/amd64", "linux/arm64"],
        1,
        50_000,
        &[],
    );
    let src = env.dir.path().join("layout-in");
    images::write_layout(&src, "v1", &image);
    let src_ref = format!("oci:{}:v1", src.display());
    let dest = format!("docker://{host}/tls/app:v1");
    let cert_dir = certs.to_str().unwrap();

    // Without credentials, or without trusting the CA, nothing goes through.
    let denied = skopeo_output(&[
        "copy",
        "--all",
        "--dest-cert-dir",
        cert_dir,
        &src_ref,
        &dest,
    ]);
    assert!(!denied.status.success(), "pushed without credentials");
    let untrusted = skopeo_output(&[
        "copy",
        "--all",
        "--dest-creds",
        "alice:secret",
        &src_ref,
        &dest,
    ]);
    assert!(
        !untrusted.status.success(),
        "pushed without verifying the certificate"
    );

    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-cert-dir",
        cert_dir,
        "--dest-creds",
        "alice:secret",
        &src_ref,
        &dest,
    ]);
    let out = env.dir.path().join("layout-out");
    let out_ref = format!("oci:{}:v1", out.display());
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-cert-dir",
        cert_dir,
        "--src-creds",
        "alice:secret",
        &dest,
        &out_ref,
    ]);
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str().unwrap(),
        image.digest()
    );

    // A renewed certificate (from another CA here) is picked up without a restart.
    let url = format!("https://{host}/v2/");
    assert_eq!(curl_status(&url, &dir.join("one-ca.crt")), Some(200));
    make_ca_and_server_cert(&dir, "two");
    std::fs::copy(dir.join("two-server.key"), &key).unwrap();
    std::fs::copy(dir.join("two-server.crt"), &cert).unwrap();
    let mut renewed = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if curl_status(&url, &dir.join("two-ca.crt")) == Some(200) {
            renewed = true;
            break;
        }
    }
    assert!(renewed, "the renewed certificate was never served");
    assert_eq!(
        curl_status(&url, &dir.join("one-ca.crt")),
        None,
        "the old certificate is still served"
    );
}
