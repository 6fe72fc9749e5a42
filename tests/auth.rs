//! Access control through a real server, on every backend: htpasswd (Distribution's
//! all-or-nothing), htpasswd with a policy of grants, and bearer tokens from a token service
//! (keys from a PEM certificate bundle or a JWK set). Every endpoint is tried without
//! credentials, with wrong ones, and with a caller who lacks the right.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::images::{self, OCI_MANIFEST};
use common::{Backend, Client, TestEnv, TestServer, error_code, sha256, with_query};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

backend_tests!(
    htpasswd_guards_every_endpoint,
    policy_grants_decide,
    tokens_from_a_certificate_bundle,
    tokens_from_a_jwk_set,
);

fn htpasswd(env: &TestEnv, users: &[(&str, &str)]) -> String {
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    let path = env.dir.path().join("htpasswd");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Every endpoint of the API, as (method, path, body), against repository `repo` holding
/// image `img` tagged `v1` and an upload session `upload`.
fn endpoints(repo: &str, img: &images::Image, upload: &str) -> Vec<(Method, String, Vec<u8>)> {
    let layer = sha256(&img.blobs[1]);
    let d = img.digest();
    vec![
        (Method::GET, "/v2/".into(), vec![]),
        (Method::GET, "/v2/_catalog".into(), vec![]),
        (Method::GET, format!("/v2/{repo}/tags/list"), vec![]),
        (Method::GET, format!("/v2/{repo}/manifests/v1"), vec![]),
        (Method::HEAD, format!("/v2/{repo}/manifests/v1"), vec![]),
        (
            Method::PUT,
            format!("/v2/{repo}/manifests/v2"),
            img.manifest.clone(),
        ),
        (Method::DELETE, format!("/v2/{repo}/manifests/{d}"), vec![]),
        (Method::GET, format!("/v2/{repo}/blobs/{layer}"), vec![]),
        (Method::HEAD, format!("/v2/{repo}/blobs/{layer}"), vec![]),
        (Method::DELETE, format!("/v2/{repo}/blobs/{layer}"), vec![]),
        (Method::POST, format!("/v2/{repo}/blobs/uploads/"), vec![]),
        (Method::GET, upload.to_string(), vec![]),
        (Method::PATCH, upload.to_string(), b"abc".to_vec()),
        (
            Method::PUT,
            with_query(upload, &format!("digest={}", sha256(b"abc"))),
            vec![],
        ),
        (Method::DELETE, upload.to_string(), vec![]),
        (Method::GET, format!("/v2/{repo}/referrers/{d}"), vec![]),
        (Method::GET, "/admin/usage".into(), vec![]),
        (Method::POST, "/admin/gc?dry_run=true".into(), vec![]),
    ]
}

async fn send(c: &Client, m: &Method, path: &str, body: &[u8]) -> reqwest::Response {
    let mut r = c.req(m.clone(), path);
    if !body.is_empty() {
        r = r.header("Content-Type", OCI_MANIFEST).body(body.to_vec());
    }
    r.send().await.unwrap()
}

async fn assert_401(r: reqwest::Response, what: &str) -> String {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
    let challenge = r
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_string();
    if r.request_method_is_not_head() {
        assert_eq!(error_code(r).await, "UNAUTHORIZED", "{what}");
    }
    challenge
}

trait HeadAware {
    fn request_method_is_not_head(&self) -> bool;
}

impl HeadAware for reqwest::Response {
    fn request_method_is_not_head(&self) -> bool {
        // HEAD answers carry no body; everything else carries the OCI error.
        self.content_length().unwrap_or(0) > 0
    }
}

async fn htpasswd_guards_every_endpoint(b: Backend) {
    let env = TestEnv::new(b).await;
    let path = htpasswd(&env, &[("alice", "secret")]);
    let s = env
        .start_with(&[
            ("REGISTRY_AUTH_HTPASSWD_PATH", &path),
            ("REGISTRY_AUTH_HTPASSWD_REALM", "wharf-test"),
        ])
        .await;
    let alice = s.client.with_basic("alice", "secret");
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[61], 1000);
    alice.push_image("auth/app", "v1", &img).await;
    let upload = alice.start_upload("auth/app").await;

    assert_eq!(
        s.client.get("/healthz").await.status(),
        200,
        "health stays open"
    );
    for (m, path, body) in endpoints("auth/app", &img, &upload) {
        let what = format!("{m} {path}");
        let challenge = assert_401(send(&s.client, &m, &path, &body).await, &what).await;
        assert_eq!(challenge, "Basic realm=\"wharf-test\"", "{what}");
        let wrong = s.client.with_basic("alice", "wrong");
        assert_401(
            send(&wrong, &m, &path, &body).await,
            &format!("{what} (wrong password)"),
        )
        .await;
        let nobody = s.client.with_basic("mallory", "secret");
        assert_401(
            send(&nobody, &m, &path, &body).await,
            &format!("{what} (unknown user)"),
        )
        .await;
        let garbage = s.client.with_auth("Basic !!!not-base64");
        assert_401(
            send(&garbage, &m, &path, &body).await,
            &format!("{what} (malformed)"),
        )
        .await;
    }
    // Without a policy, an authenticated user may do everything, the admin endpoints too.
    for (m, path, body) in endpoints("auth/app", &img, &upload) {
        let r = send(&alice, &m, &path, &body).await;
        assert!(
            r.status() != 401 && r.status() != 403 && !r.status().is_server_error(),
            "{m} {path}: {}",
            r.status()
        );
    }
    // The file is read again when it changes.
    std::fs::write(
        &path,
        format!("bob:{}\n", bcrypt::hash("hunter2", 4).unwrap()),
    )
    .unwrap();
    let bob = s.client.with_basic("bob", "hunter2");
    let mut reloaded = false;
    for _ in 0..50 {
        if bob.get("/v2/").await.status() == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new htpasswd entry never took effect");
    assert_eq!(
        alice.get("/v2/").await.status(),
        401,
        "a removed user must be refused"
    );
}

const POLICY: &str = r#"
  policy:
    groups:
      devs: [bob]
    grants:
      - who: [alice]
        actions: [admin, pull, push, delete]
      - who: ["group:devs"]
        repositories: ["team/*"]
        actions: [pull, push]
      - who: [anonymous]
        repositories: ["*/public/**"]
        actions: [pull]
"#;

async fn policy_grants_decide(b: Backend) {
    let env = TestEnv::new(b).await;
    let path = htpasswd(&env, &[("alice", "a"), ("bob", "b"), ("carol", "c")]);
    let s = env
        .start_with_yaml(&format!("auth:\n  htpasswd:\n    path: {path}\n{POLICY}"))
        .await;
    let (alice, bob, carol, anon) = (
        s.client.with_basic("alice", "a"),
        s.client.with_basic("bob", "b"),
        s.client.with_basic("carol", "c"),
        s.client.clone(),
    );
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[62], 1000);
    let layer = sha256(&img.blobs[1]);
    alice.push_image("secret/app", "v1", &img).await;
    alice.push_image("org/public/app", "v1", &img).await;

    // bob: pull and push in team/*, nothing else.
    bob.push_image("team/app", "v1", &img).await;
    bob.pull_and_verify("team/app", "v1").await;
    let r = bob
        .put_manifest("other/app", "v1", OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(bob.get("/v2/secret/app/manifests/v1").await.status(), 403);
    let d = img.digest();
    assert_eq!(
        bob.delete(&format!("/v2/team/app/manifests/{d}"))
            .await
            .status(),
        403
    );
    assert_eq!(bob.get("/admin/usage").await.status(), 403);
    assert_eq!(
        bob.req(Method::POST, "/admin/gc?dry_run=true")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // carol is known and granted nothing.
    assert_eq!(carol.get("/v2/team/app/manifests/v1").await.status(), 403);

    // Anonymous pull where the policy says so; everything else asks for credentials.
    assert_eq!(anon.get("/v2/").await.status(), 200);
    anon.pull_and_verify("org/public/app", "v1").await;
    let r = anon
        .put_manifest("org/public/app", "v2", OCI_MANIFEST, &img.manifest)
        .await;
    assert_401(r, "anonymous push").await;
    assert_401(
        anon.get("/v2/team/app/manifests/v1").await,
        "anonymous pull of team/app",
    )
    .await;

    // The catalog lists what the caller may pull.
    let names = |v: Value| -> Vec<String> {
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    };
    let cat = |c: Client| async move { names(c.get("/v2/_catalog").await.json().await.unwrap()) };
    assert_eq!(cat(bob.clone()).await, ["team/app"]);
    assert_eq!(cat(anon.clone()).await, ["org/public/app"]);
    assert_eq!(
        cat(alice.clone()).await,
        ["org/public/app", "secret/app", "team/app"]
    );
    let page: Value = alice
        .get("/v2/_catalog?n=1&last=org/public/app")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(page), ["secret/app"]);

    // A mount needs pull on the source: without it bob gets an ordinary upload (202), never
    // the blob; with it, the mount.
    let r = bob
        .req(
            Method::POST,
            &format!("/v2/team/copy/blobs/uploads/?mount={layer}&from=secret/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "mounted from a repository bob may not pull"
    );
    assert_eq!(
        bob.head(&format!("/v2/team/copy/blobs/{layer}"))
            .await
            .status(),
        404
    );
    let r = bob
        .req(
            Method::POST,
            &format!("/v2/team/copy/blobs/uploads/?mount={layer}&from=team/app"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Without `from`, a mount could probe any repository: only who may pull everything may.
    let r = bob
        .req(
            Method::POST,
            &format!("/v2/team/copy2/blobs/uploads/?mount={layer}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // alice administers.
    assert_eq!(alice.get("/admin/usage").await.status(), 200);
    let r = alice
        .req(Method::POST, "/admin/gc?dry_run=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        alice
            .delete(&format!("/v2/team/app/manifests/{d}"))
            .await
            .status(),
        202
    );
}

/// A token service's key pair: the PEM certificate (or JWK) to configure, and a signer.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
    kid: Option<String>,
}

impl Issuer {
    fn token(&self, claims: Value) -> String {
        let mut h = jsonwebtoken::Header::new(self.alg);
        h.kid = self.kid.clone();
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(service: &str, issuer: &str, access: Value, exp_in: i64, nbf_in: i64) -> Value {
    json!({
        "iss": issuer, "sub": "ci", "aud": service,
        "exp": now() + exp_in, "nbf": now() + nbf_in, "iat": now(),
        "access": access,
    })
}

/// An RSA key and self-signed certificate made with openssl.
fn rsa_issuer(dir: &std::path::Path, name: &str) -> (Issuer, std::path::PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (Debian ships it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(&key).unwrap();
    (
        Issuer {
            key: jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
            alg: jsonwebtoken::Algorithm::RS256,
            kid: None,
        },
        cert,
    )
}

/// A P-256 key and its JWK.
fn ec_issuer(kid: &str) -> (Issuer, Value) {
    use base64::Engine;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                     "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    (
        Issuer {
            key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            alg: jsonwebtoken::Algorithm::ES256,
            kid: Some(kid.to_string()),
        },
        jwk,
    )
}

const SERVICE: &str = "wharf.test";
const ISSUER: &str = "token.test";
const REALM: &str = "https://token.test/token";

async fn token_server(env: &TestEnv, key_config: (&str, String)) -> TestServer {
    env.start_with(&[
        ("REGISTRY_AUTH_TOKEN_REALM", REALM),
        ("REGISTRY_AUTH_TOKEN_SERVICE", SERVICE),
        ("REGISTRY_AUTH_TOKEN_ISSUER", ISSUER),
        (key_config.0, &key_config.1),
    ])
    .await
}

/// The token matrix, for a server trusting `good` and not `other`.
async fn token_matrix(s: &TestServer, good: &Issuer, other: &Issuer) {
    let repo = "tok/app";
    let full = json!([{"type": "repository", "name": repo, "actions": ["pull", "push", "delete"]}]);
    let bearer = |t: String| s.client.with_auth(&format!("Bearer {t}"));
    let pusher = bearer(good.token(claims(SERVICE, ISSUER, full.clone(), 300, -10)));
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[63], 1000);
    pusher.push_image(repo, "v1", &img).await;
    pusher.pull_and_verify(repo, "v1").await;

    // No token: the challenge names realm, service and the exact scope the request needs.
    let r = s.client.get(&format!("/v2/{repo}/manifests/v1")).await;
    let c = assert_401(r, "no token").await;
    assert_eq!(
        c,
        format!("Bearer realm=\"{REALM}\",service=\"{SERVICE}\",scope=\"repository:{repo}:pull\"")
    );
    let r = s
        .client
        .put_manifest(repo, "v2", OCI_MANIFEST, &img.manifest)
        .await;
    let c = assert_401(r, "no token, push").await;
    assert!(
        c.contains(&format!("scope=\"repository:{repo}:pull,push\"")),
        "{c}"
    );
    let c = assert_401(s.client.get("/v2/_catalog").await, "catalog").await;
    assert!(c.contains("scope=\"registry:catalog:*\""), "{c}");

    // A token that grants pull only: push is refused, with insufficient_scope.
    let reader = bearer(good.token(claims(
        SERVICE,
        ISSUER,
        json!([{"type": "repository", "name": repo, "actions": ["pull"]}]),
        300,
        -10,
    )));
    reader.pull_and_verify(repo, "v1").await;
    let r = reader
        .put_manifest(repo, "v2", OCI_MANIFEST, &img.manifest)
        .await;
    let c = assert_401(r, "pull-only token pushing").await;
    assert!(c.contains("error=\"insufficient_scope\""), "{c}");
    assert_401(
        reader.get("/v2/tok/other/manifests/v1").await,
        "another repository",
    )
    .await;
    assert_401(
        reader.get("/admin/usage").await,
        "admin with a repository token",
    )
    .await;

    // Tokens that must be refused, each with 401 (never 500).
    let pull = json!([{"type": "repository", "name": repo, "actions": ["pull"]}]);
    let bad = [
        (
            "expired",
            good.token(claims(SERVICE, ISSUER, pull.clone(), -120, -300)),
        ),
        (
            "not yet valid",
            good.token(claims(SERVICE, ISSUER, pull.clone(), 600, 300)),
        ),
        (
            "another service",
            good.token(claims("elsewhere", ISSUER, pull.clone(), 300, -10)),
        ),
        (
            "another issuer",
            good.token(claims(SERVICE, "evil", pull.clone(), 300, -10)),
        ),
        (
            "another key",
            other.token(claims(SERVICE, ISSUER, pull.clone(), 300, -10)),
        ),
        ("malformed", "not.a.jwt".to_string()),
        ("unsigned", {
            let mut parts: Vec<String> = good
                .token(claims(SERVICE, ISSUER, pull.clone(), 300, -10))
                .split('.')
                .map(str::to_string)
                .collect();
            parts[2] = String::new();
            parts.join(".")
        }),
    ];
    for (what, t) in bad {
        let r = bearer(t).get(&format!("/v2/{repo}/manifests/v1")).await;
        let c = assert_401(r, what).await;
        assert!(c.contains("error=\"invalid_token\""), "{what}: {c}");
    }

    // Registry-wide scopes.
    let cataloger = bearer(good.token(claims(
        SERVICE,
        ISSUER,
        json!([{"type": "registry", "name": "catalog", "actions": ["*"]}]),
        300,
        -10,
    )));
    let cat: Value = cataloger.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(cat["repositories"], json!([repo]));
    let admin = bearer(good.token(claims(
        SERVICE,
        ISSUER,
        json!([{"type": "registry", "name": "admin", "actions": ["*"]}]),
        300,
        -10,
    )));
    assert_eq!(admin.get("/admin/usage").await.status(), 200);
    // Basic credentials are not tokens.
    assert_401(
        s.client.with_basic("a", "b").get("/v2/").await,
        "basic in token mode",
    )
    .await;
}

async fn tokens_from_a_certificate_bundle(b: Backend) {
    let env = TestEnv::new(b).await;
    let (good, cert) = rsa_issuer(env.dir.path(), "good");
    let (other, _) = rsa_issuer(env.dir.path(), "other");
    let s = token_server(
        &env,
        (
            "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE",
            cert.display().to_string(),
        ),
    )
    .await;
    token_matrix(&s, &good, &other).await;
}

async fn tokens_from_a_jwk_set(b: Backend) {
    let env = TestEnv::new(b).await;
    let (good, jwk) = ec_issuer("k1");
    let (other, _) = ec_issuer("k1");
    let path = env.dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [jwk]}).to_string()).unwrap();
    let s = token_server(
        &env,
        ("REGISTRY_AUTH_TOKEN_JWKS", path.display().to_string()),
    )
    .await;
    token_matrix(&s, &good, &other).await;
}
