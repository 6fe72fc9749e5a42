//! Prometheus metrics: every name declared here, one recorder per process, served as text at
//! `/metrics` on the debug listener (`http.debug.addr`, as Distribution's debug server), never
//! on the public port.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "wharf_http_requests_total";
pub const HTTP_DURATION: &str = "wharf_http_request_duration_seconds";
pub const HTTP_BYTES_IN: &str = "wharf_http_received_bytes_total";
pub const HTTP_BYTES_OUT: &str = "wharf_http_sent_bytes_total";
pub const UPLOADS_IN_FLIGHT: &str = "wharf_uploads_in_flight";
pub const GC_RUNS: &str = "wharf_gc_runs_total";
pub const GC_DURATION: &str = "wharf_gc_run_duration_seconds";
pub const GC_MANIFESTS_DELETED: &str = "wharf_gc_manifests_deleted_total";
pub const GC_BLOBS_DELETED: &str = "wharf_gc_blobs_deleted_total";
pub const GC_BYTES_FREED: &str = "wharf_gc_bytes_freed_total";
pub const DB_POOL_IN_USE: &str = "wharf_db_pool_connections_in_use";
pub const DB_POOL_IDLE: &str = "wharf_db_pool_connections_idle";
pub const DB_WRITE_WAIT: &str = "wharf_db_write_wait_seconds";
pub const STORAGE_DURATION: &str = "wharf_storage_operation_duration_seconds";
pub const STORAGE_ERRORS: &str = "wharf_storage_errors_total";
pub const OBJECTS_MISSING: &str = "wharf_blob_objects_missing_total";
pub const JOB_LEASE_HELD: &str = "wharf_job_lease_held";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0,
                ])
                .expect("bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed (a test harness): keep ours for rendering.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "requests by route, method and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "request latency by route and method"
    );
    describe_counter!(
        HTTP_BYTES_IN,
        Unit::Bytes,
        "request body bytes (Content-Length)"
    );
    describe_counter!(HTTP_BYTES_OUT, Unit::Bytes, "response body bytes");
    describe_gauge!(UPLOADS_IN_FLIGHT, "upload requests writing to storage now");
    describe_counter!(GC_RUNS, "garbage collection runs by mode and result");
    describe_histogram!(
        GC_DURATION,
        Unit::Seconds,
        "garbage collection run duration"
    );
    describe_counter!(
        GC_MANIFESTS_DELETED,
        "manifests deleted by garbage collection"
    );
    describe_counter!(
        GC_BLOBS_DELETED,
        "blob objects deleted by garbage collection"
    );
    describe_counter!(
        GC_BYTES_FREED,
        Unit::Bytes,
        "bytes freed by garbage collection"
    );
    describe_gauge!(DB_POOL_IN_USE, "database connections in use");
    describe_gauge!(DB_POOL_IDLE, "database connections idle in the pool");
    describe_histogram!(
        DB_WRITE_WAIT,
        Unit::Seconds,
        "time to start a write transaction (writer gate and pool)"
    );
    describe_histogram!(
        STORAGE_DURATION,
        Unit::Seconds,
        "storage driver operations by driver and operation"
    );
    describe_counter!(
        STORAGE_ERRORS,
        "storage driver errors by driver, operation and kind"
    );
    describe_counter!(
        OBJECTS_MISSING,
        "reads that found a stored blob's object missing (data loss)"
    );
    describe_gauge!(
        JOB_LEASE_HELD,
        "1 while this replica holds the lease of a background job"
    );
}

pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
