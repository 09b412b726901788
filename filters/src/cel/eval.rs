//! Evaluation of a checked expression against one request's attributes. Errors follow
//! CEL: `false && error` is `false`, `true || error` is `true`; otherwise an error
//! propagates.

use std::borrow::Cow;

use super::check::{Arith, Cmp, Node, StrTest};
use super::{Activation, Value};

/// Why an evaluation produced no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The request has no such attribute (or map entry).
    #[error("no such attribute or key")]
    Missing,
    /// Integer overflow or division by zero.
    #[error("arithmetic error")]
    Arithmetic,
    /// A string that is not an integer given to `int()`.
    #[error("not an integer")]
    NotAnInteger,
    /// A value of an unexpected type (an attribute the activation gave in another type).
    #[error("type mismatch")]
    Type,
}

type R<'a> = Result<Value<'a>, EvalError>;

fn boolean(v: R<'_>) -> Result<bool, EvalError> {
    match v? {
        Value::Bool(b) => Ok(b),
        _ => Err(EvalError::Type),
    }
}

fn int(v: R<'_>) -> Result<i64, EvalError> {
    match v? {
        Value::Int(i) => Ok(i),
        _ => Err(EvalError::Type),
    }
}

fn string(v: R<'_>) -> Result<Cow<'_, str>, EvalError> {
    match v? {
        Value::Str(s) => Ok(s),
        _ => Err(EvalError::Type),
    }
}

/// Evaluates `node`.
pub fn eval<'a>(node: &'a Node, act: &'a dyn Activation) -> R<'a> {
    Ok(match node {
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) => Value::Int(*i),
        Node::Str(s) => Value::Str(Cow::Borrowed(s)),
        Node::Attr(a) => act.attribute(*a).ok_or(EvalError::Missing)?,
        Node::Map(m) => Value::Map(*m),
        Node::Entry(m, key) => {
            let v = match &**key {
                Node::Str(k) => act.entry(*m, k),
                other => act.entry(*m, &string(eval(other, act))?),
            };
            Value::Str(Cow::Borrowed(v.ok_or(EvalError::Missing)?))
        }
        Node::HasEntry(m, key) => Value::Bool(act.entry(*m, key).is_some()),
        Node::HasAttr(a) => Value::Bool(act.attribute(*a).is_some()),
        Node::Not(e) => Value::Bool(!boolean(eval(e, act))?),
        Node::Neg(e) => Value::Int(
            int(eval(e, act))?
                .checked_neg()
                .ok_or(EvalError::Arithmetic)?,
        ),
        Node::And(l, r) => {
            let l = boolean(eval(l, act));
            if l == Ok(false) {
                return Ok(Value::Bool(false));
            }
            match (l, boolean(eval(r, act))) {
                (_, Ok(false)) => Value::Bool(false),
                (Ok(true), Ok(true)) => Value::Bool(true),
                (Err(e), _) | (_, Err(e)) => return Err(e),
                (Ok(false), _) => unreachable!("returned above"),
            }
        }
        Node::Or(l, r) => {
            let l = boolean(eval(l, act));
            if l == Ok(true) {
                return Ok(Value::Bool(true));
            }
            match (l, boolean(eval(r, act))) {
                (_, Ok(true)) => Value::Bool(true),
                (Ok(false), Ok(false)) => Value::Bool(false),
                (Err(e), _) | (_, Err(e)) => return Err(e),
                (Ok(true), _) => unreachable!("returned above"),
            }
        }
        Node::Cmp(op, l, r) => {
            let ord = match (eval(l, act)?, eval(r, act)?) {
                (Value::Int(a), Value::Int(b)) => a.cmp(&b),
                (Value::Str(a), Value::Str(b)) => a.cmp(&b),
                (Value::Bool(a), Value::Bool(b)) => a.cmp(&b),
                _ => return Err(EvalError::Type),
            };
            use std::cmp::Ordering::*;
            Value::Bool(match op {
                Cmp::Eq => ord == Equal,
                Cmp::Ne => ord != Equal,
                Cmp::Lt => ord == Less,
                Cmp::Le => ord != Greater,
                Cmp::Gt => ord == Greater,
                Cmp::Ge => ord != Less,
            })
        }
        Node::InList(item, list) => {
            let v = eval(item, act)?;
            for n in list {
                if eval(n, act)? == v {
                    return Ok(Value::Bool(true));
                }
            }
            Value::Bool(false)
        }
        Node::InMap(key, m) => {
            let k = string(eval(key, act))?;
            Value::Bool(act.entry(*m, &k).is_some())
        }
        Node::Arith(op, l, r) => {
            let (a, b) = (int(eval(l, act))?, int(eval(r, act))?);
            let v = match op {
                Arith::Add => a.checked_add(b),
                Arith::Sub => a.checked_sub(b),
                Arith::Mul => a.checked_mul(b),
                Arith::Div => a.checked_div(b),
                Arith::Rem => a.checked_rem(b),
            };
            Value::Int(v.ok_or(EvalError::Arithmetic)?)
        }
        Node::Concat(l, r) => {
            let mut s = string(eval(l, act))?.into_owned();
            s.push_str(&string(eval(r, act))?);
            Value::Str(Cow::Owned(s))
        }
        Node::Cond(c, a, b) => {
            if boolean(eval(c, act))? {
                eval(a, act)?
            } else {
                eval(b, act)?
            }
        }
        Node::Size(e) => Value::Int(string(eval(e, act))?.chars().count() as i64),
        Node::ToString(e) => match eval(e, act)? {
            Value::Str(s) => Value::Str(s),
            Value::Int(i) => Value::Str(Cow::Owned(i.to_string())),
            Value::Bool(b) => Value::Str(Cow::Borrowed(if b { "true" } else { "false" })),
            Value::Map(_) => return Err(EvalError::Type),
        },
        Node::ToInt(e) => match eval(e, act)? {
            Value::Int(i) => Value::Int(i),
            Value::Str(s) => Value::Int(s.parse().map_err(|_| EvalError::NotAnInteger)?),
            _ => return Err(EvalError::Type),
        },
        Node::StrTest(t, s, a) => {
            let s = string(eval(s, act))?;
            let a = string(eval(a, act))?;
            Value::Bool(match t {
                StrTest::StartsWith => s.starts_with(&*a),
                StrTest::EndsWith => s.ends_with(&*a),
                StrTest::Contains => s.contains(&*a),
            })
        }
        Node::Matches(s, re) => Value::Bool(re.is_match(&string(eval(s, act))?)),
    })
}
