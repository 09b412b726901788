//! Access log filters: which finished requests an access log keeps, with Envoy's
//! semantics for the filters istiod generates (status, response flags, CEL, `and`).

use crate::cel::Activation;
use crate::model::telemetry::LogFilter;

use super::HttpRecord;

/// Whether `filter` keeps the request `record` (`facts` answers its CEL predicates).
pub fn keeps(filter: &LogFilter, record: &HttpRecord, facts: &dyn Activation) -> bool {
    match filter {
        LogFilter::Status(op, v) => op.holds(record.code.into(), (*v).into()),
        LogFilter::Duration(op, ms) => op.holds(record.duration.as_millis() as u64, *ms),
        LogFilter::NotHealthCheck => true,
        LogFilter::ResponseFlags(flags) => {
            let set = record
                .flags
                .split(',')
                .filter(|f| !f.is_empty() && *f != "-");
            if flags.is_empty() {
                set.count() > 0
            } else {
                set.into_iter().any(|f| flags.iter().any(|w| w == f))
            }
        }
        LogFilter::And(all) => all.iter().all(|f| keeps(f, record, facts)),
        LogFilter::Or(any) => any.iter().any(|f| keeps(f, record, facts)),
        LogFilter::Cel(e) => e.matches(facts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::{Attribute, Expression, MapAttribute, Value};
    use crate::model::telemetry::Comparison;

    struct Code(u16);
    impl Activation for Code {
        fn attribute(&self, a: Attribute) -> Option<Value<'_>> {
            (a == Attribute::ResponseCode).then_some(Value::Int(self.0.into()))
        }
        fn entry(&self, _: MapAttribute, _: &str) -> Option<&str> {
            None
        }
    }

    fn record(code: u16, flags: &'static str) -> HttpRecord {
        HttpRecord {
            start: std::time::SystemTime::UNIX_EPOCH,
            method: "GET".into(),
            path: "/".into(),
            protocol: "HTTP/1.1",
            request_headers: Default::default(),
            response_headers: Default::default(),
            code,
            flags,
            details: String::new(),
            grpc_status: None,
            bytes_received: 0,
            request_total: 0,
            response_total: 0,
            bytes_sent: 0,
            duration: std::time::Duration::from_millis(30),
            upstream_service_time: None,
            upstream_host: None,
            upstream_cluster: None,
            downstream_local_address: String::new(),
            downstream_remote_address: String::new(),
            route_name: None,
            upstream_failure: None,
        }
    }

    #[test]
    fn istiod_filters() {
        // pilot/pkg/networking/core/accesslog.go: hboneTerminationAccessLogFilter (>= 400),
        // hboneOriginationAccessLogFilter (UF), and the Telemetry CEL filter under `and`.
        let ge400 = LogFilter::Status(Comparison::Ge, 400);
        assert!(keeps(&ge400, &record(503, "-"), &Code(503)));
        assert!(!keeps(&ge400, &record(200, "-"), &Code(200)));
        let uf = LogFilter::ResponseFlags(vec!["UF".into()]);
        assert!(keeps(&uf, &record(503, "UF,URX"), &Code(503)));
        assert!(!keeps(&uf, &record(503, "UO"), &Code(503)));
        assert!(!keeps(
            &LogFilter::ResponseFlags(vec![]),
            &record(200, "-"),
            &Code(200)
        ));
        let cel = LogFilter::Cel(Expression::predicate("response.code >= 500").unwrap());
        let both = LogFilter::And(vec![ge400, cel]);
        assert!(keeps(&both, &record(503, "-"), &Code(503)));
        assert!(!keeps(&both, &record(404, "-"), &Code(404)));
        let slow = LogFilter::Duration(Comparison::Ge, 31);
        assert!(!keeps(&slow, &record(200, "-"), &Code(200)));
    }
}
