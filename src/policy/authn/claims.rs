//! Claim readers shared by JWTs and introspection answers: NumericDates, the audience, claim
//! paths, string sets.

use serde_json::Value;

use super::AuthFailure;
use crate::config::auth::ClaimPath;
use crate::config::ServerAuth;

/// A NumericDate: seconds since the epoch, possibly fractional (rounded down).
pub(crate) fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// Whether `aud` (a string or a list of them) names the endpoint's resource, or one of the
/// issuer's `audience` when it has them. Absent or of another shape: it does not.
pub(in crate::policy) fn audience_ok(
    aud: Option<&Value>,
    issuer: &crate::config::auth::Issuer,
    sa: &ServerAuth,
) -> bool {
    let resource = std::slice::from_ref(&sa.resource);
    let audiences = issuer.audience.as_deref().unwrap_or(resource);
    match aud {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    }
}

pub(crate) fn lookup<'v>(claims: &'v Value, path: &ClaimPath) -> Option<&'v Value> {
    path.0.iter().try_fold(claims, |v, key| v.get(key.as_str()))
}

/// An array of strings or one space-separated string; absent or null = none.
pub(crate) fn string_set(v: Option<&Value>) -> Result<Box<[Box<str>]>, AuthFailure> {
    match v {
        None | Some(Value::Null) => Ok(Box::new([])),
        Some(Value::String(s)) => Ok(s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(Into::into)
            .collect()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|x| x.as_str().map(Into::into).ok_or(AuthFailure::BadClaims))
            .collect(),
        Some(_) => Err(AuthFailure::BadClaims),
    }
}
