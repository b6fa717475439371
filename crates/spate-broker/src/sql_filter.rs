//! SQL92 subscription filters (`expressionType` SQL92), evaluated against a
//! message's properties on the broker, so unmatched messages never cross
//! the wire.
//!
//! The grammar is RocketMQ's subset, parsed with `sqlparser`:
//! - identifiers name properties (`TAGS` and `KEYS` included);
//! - constants are numbers, single-quoted strings, TRUE, FALSE, NULL;
//! - comparisons `=`, `<>`, `>`, `>=`, `<`, `<=`, `[NOT] BETWEEN .. AND ..`,
//!   `[NOT] IN (..)`, `IS [NOT] NULL`;
//! - logic `AND`, `OR`, `NOT`, and parentheses.
//!
//! Everything else (functions, arithmetic, LIKE, subqueries) is refused
//! when the filter is parsed, with the construct named.
//!
//! Property values are strings. A comparison with a number compares
//! numerically when the value parses as one. Logic is three-valued: a
//! missing property makes its comparisons unknown, and only a filter
//! that comes out true selects the message.

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use spate_common::message;

/// Longest filter text accepted.
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// A parsed, checked SQL92 filter.
#[derive(Debug, Clone)]
pub struct SqlFilter {
    expr: Expr,
}

/// A value while evaluating.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

impl Val {
    fn number(&self) -> Option<f64> {
        match self {
            Val::Num(n) => Some(*n),
            Val::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

impl SqlFilter {
    /// Parses and checks `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<SqlFilter, String> {
        if text.trim().is_empty() {
            return Err("empty SQL92 expression".into());
        }
        if text.len() > MAX_EXPRESSION_LEN {
            return Err(format!("SQL92 expression of {} bytes; at most {MAX_EXPRESSION_LEN}", text.len()));
        }
        let dialect = GenericDialect {};
        let mut parser =
            Parser::new(&dialect).try_with_sql(text).map_err(|e| format!("invalid SQL92 expression: {e}"))?;
        let expr = parser.parse_expr().map_err(|e| format!("invalid SQL92 expression: {e}"))?;
        let rest = parser.peek_token();
        if rest.token != Token::EOF {
            return Err(format!("invalid SQL92 expression: unexpected '{}' after the expression", rest.token));
        }
        check(&expr)?;
        Ok(SqlFilter { expr })
    }

    /// Whether a message with these encoded properties is selected.
    pub fn matches(&self, properties: &str) -> bool {
        truth(&self.expr, properties) == Some(true)
    }
}

/// Words of the grammar that cannot name a property (the parser would
/// otherwise take `a > AND` as a comparison with a property "AND").
const RESERVED: &[&str] = &["AND", "OR", "NOT", "BETWEEN", "IN", "IS", "NULL", "TRUE", "FALSE", "LIKE"];

/// Refuses what the evaluator does not support.
fn check(e: &Expr) -> Result<(), String> {
    match e {
        Expr::Identifier(i) if i.quote_style.is_none() && RESERVED.iter().any(|w| w.eq_ignore_ascii_case(&i.value)) => {
            Err(format!("invalid SQL92 expression: '{}' is a keyword, not a property name", i.value))
        }
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => Ok(()),
        Expr::Value(v) => match &v.value {
            Value::Number(..) | Value::SingleQuotedString(_) | Value::Boolean(_) | Value::Null => Ok(()),
            other => Err(format!("unsupported constant in a SQL92 filter: {other}")),
        },
        Expr::Nested(inner) | Expr::IsNull(inner) | Expr::IsNotNull(inner) => check(inner),
        Expr::UnaryOp { op: UnaryOperator::Not, expr } => check(expr),
        Expr::UnaryOp { op: UnaryOperator::Minus | UnaryOperator::Plus, expr } if is_number(expr) => Ok(()),
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And
            | BinaryOperator::Or
            | BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq => {
                check(left)?;
                check(right)
            }
            other => Err(format!("unsupported operator in a SQL92 filter: {other}")),
        },
        Expr::Between { expr, low, high, .. } => {
            check(expr)?;
            check(low)?;
            check(high)
        }
        Expr::InList { expr, list, .. } => {
            check(expr)?;
            list.iter().try_for_each(check)
        }
        other => Err(format!("unsupported in a SQL92 filter: {other}")),
    }
}

fn is_number(e: &Expr) -> bool {
    matches!(e, Expr::Value(v) if matches!(v.value, Value::Number(..)))
}

fn property_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        // `a.b` names the property "a.b".
        Expr::CompoundIdentifier(parts) => Some(parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".")),
        _ => None,
    }
}

fn value(e: &Expr, props: &str) -> Val {
    if let Some(name) = property_name(e) {
        return message::property(props, &name).map_or(Val::Null, |v| Val::Str(v.to_string()));
    }
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().map_or(Val::Null, Val::Num),
            Value::SingleQuotedString(s) => Val::Str(s.clone()),
            Value::Boolean(b) => Val::Bool(*b),
            _ => Val::Null,
        },
        Expr::Nested(inner) => value(inner, props),
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match value(expr, props) {
            Val::Num(n) => Val::Num(-n),
            _ => Val::Null,
        },
        Expr::UnaryOp { op: UnaryOperator::Plus, expr } => value(expr, props),
        other => truth(other, props).map_or(Val::Null, Val::Bool),
    }
}

/// Equality: numbers numerically, strings exactly, booleans (or strings
/// "true"/"false" against a boolean); unknown when either side is missing.
fn equal(a: &Val, b: &Val) -> Option<bool> {
    match (a, b) {
        (Val::Null, _) | (_, Val::Null) => None,
        (Val::Str(x), Val::Str(y)) => Some(x == y),
        (Val::Bool(x), Val::Bool(y)) => Some(x == y),
        (Val::Bool(x), Val::Str(s)) | (Val::Str(s), Val::Bool(x)) => s.parse::<bool>().ok().map(|v| v == *x),
        (Val::Num(_), _) | (_, Val::Num(_)) => Some(a.number()? == b.number()?),
    }
}

fn order(a: &Val, b: &Val) -> Option<std::cmp::Ordering> {
    a.number()?.partial_cmp(&b.number()?)
}

/// Three-valued truth: `None` is unknown.
fn truth(e: &Expr, props: &str) -> Option<bool> {
    use std::cmp::Ordering::*;
    match e {
        Expr::Nested(inner) => truth(inner, props),
        Expr::UnaryOp { op: UnaryOperator::Not, expr } => truth(expr, props).map(|b| !b),
        Expr::IsNull(inner) => Some(value(inner, props) == Val::Null),
        Expr::IsNotNull(inner) => Some(value(inner, props) != Val::Null),
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => match (truth(left, props), truth(right, props)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Expr::BinaryOp { left, op: BinaryOperator::Or, right } => match (truth(left, props), truth(right, props)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Expr::BinaryOp { left, op, right } => {
            let (l, r) = (value(left, props), value(right, props));
            match op {
                BinaryOperator::Eq => equal(&l, &r),
                BinaryOperator::NotEq => equal(&l, &r).map(|b| !b),
                BinaryOperator::Gt => order(&l, &r).map(|o| o == Greater),
                BinaryOperator::GtEq => order(&l, &r).map(|o| o != Less),
                BinaryOperator::Lt => order(&l, &r).map(|o| o == Less),
                BinaryOperator::LtEq => order(&l, &r).map(|o| o != Greater),
                _ => None,
            }
        }
        Expr::Between { expr, negated, low, high } => {
            let v = value(expr, props);
            let inside = order(&v, &value(low, props))? != Less && order(&v, &value(high, props))? != Greater;
            Some(inside != *negated)
        }
        Expr::InList { expr, list, negated } => {
            let v = value(expr, props);
            if v == Val::Null {
                return None;
            }
            let found = list.iter().any(|item| equal(&v, &value(item, props)) == Some(true));
            Some(found != *negated)
        }
        other => match value(other, props) {
            Val::Bool(b) => Some(b),
            Val::Str(s) => s.parse().ok(),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> String {
        message::encode_properties(pairs.iter().copied()).unwrap()
    }

    fn sel(sql: &str, pairs: &[(&str, &str)]) -> bool {
        SqlFilter::parse(sql).unwrap().matches(&props(pairs))
    }

    #[test]
    fn comparisons_numbers_and_strings() {
        let m = [("a", "5"), ("region", "hz"), ("TAGS", "TagA")];
        assert!(sel("a > 3", &m));
        assert!(!sel("a > 5", &m));
        assert!(sel("a >= 5 AND a <= 5", &m));
        assert!(sel("a = 5", &m));
        assert!(sel("a <> 6", &m));
        assert!(sel("a < 10.5", &m));
        assert!(sel("a > -1", &m));
        assert!(sel("region = 'hz'", &m));
        assert!(!sel("region = 'sh'", &m));
        assert!(sel("region <> 'sh'", &m));
        assert!(sel("TAGS = 'TagA'", &m));
        // A string is not ordered against a number.
        assert!(!sel("region > 1", &m));
    }

    #[test]
    fn between_in_and_null() {
        let m = [("a", "5"), ("c", "x")];
        assert!(sel("a BETWEEN 1 AND 5", &m));
        assert!(!sel("a BETWEEN 6 AND 9", &m));
        assert!(sel("a NOT BETWEEN 6 AND 9", &m));
        assert!(sel("c IN ('x', 'y')", &m));
        assert!(!sel("c IN ('y', 'z')", &m));
        assert!(sel("c NOT IN ('y', 'z')", &m));
        assert!(sel("b IS NULL", &m));
        assert!(sel("a IS NOT NULL", &m));
        assert!(!sel("a IS NULL", &m));
    }

    #[test]
    fn logic_is_three_valued() {
        let m = [("a", "5")];
        // b is missing: its comparisons are unknown, never true.
        assert!(!sel("b = 1", &m));
        assert!(!sel("NOT (b = 1)", &m));
        assert!(!sel("b IN ('1')", &m));
        assert!(!sel("b NOT IN ('1')", &m));
        assert!(sel("b = 1 OR a = 5", &m));
        assert!(!sel("b = 1 AND a = 5", &m));
        assert!(sel("NOT (a = 4)", &m));
        assert!(sel("(a = 4 OR a = 5) AND NOT a = 6", &m));
        assert!(sel("TRUE", &m));
        assert!(!sel("FALSE", &m));
        assert!(sel("flag = TRUE", &[("flag", "true")]));
    }

    #[test]
    fn invalid_expressions_are_refused_clearly() {
        for bad in ["", "a >", "a > AND", "a = = 1", "a LIKE 'x%'", "f(a) = 1", "a + 1 > 2", "a = 1 garbage", "(a = 1"]
        {
            let e = SqlFilter::parse(bad).unwrap_err();
            assert!(e.contains("SQL92"), "{bad}: {e}");
        }
        assert!(SqlFilter::parse(&"a = 1 OR ".repeat(1000)).is_err());
        // Deep nesting is refused by the parser's recursion limit, not a stack overflow.
        let deep = format!("{}a = 1{}", "(".repeat(2000), ")".repeat(2000));
        assert!(SqlFilter::parse(&deep).is_err());
    }
}
