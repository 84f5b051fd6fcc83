//! Status inquiries (0600): where a payment stands, by DE90 or by DE48 `OR`, always
//! answered afresh.

use super::*;

/// A 0600's reference: DE90, or else DE48 `OR` (`30` when neither reads).
fn status_query(msg: &Message) -> Result<(Option<OriginalRef>, Option<String>), Rc> {
    for n in [7u8, 11, 41, 42] {
        if !msg.has(n) {
            return Err(Rc::FORMAT_ERROR);
        }
    }
    let by_ref = match msg.raw(90) {
        Some(de90) => Some(parse_de90(de90).ok_or(Rc::FORMAT_ERROR)?),
        None => None,
    };
    let order_ref = match (&by_ref, msg.raw(48)) {
        (Some(_), _) => None,
        (None, Some(de48)) => match tlv::find(de48, b"OR") {
            Ok(Some(v)) if !v.is_empty() => Some(String::from_utf8_lossy(v).into_owned()),
            _ => return Err(Rc::FORMAT_ERROR),
        },
        (None, None) => return Err(Rc::FORMAT_ERROR),
    };
    Ok((by_ref, order_ref))
}

/// A 0610 about the payment `root`: approved, with DE4 (the original amount), DE48
/// `ST` and DE54 (still refundable), 12-digit minor units.
fn status_answer(root: &TxnRecord) -> (Answer, Option<(String, String, String)>) {
    let p = root.payment();
    let status = p.status();
    let refundable = if matches!(status, Status::Reversed | Status::Declined) {
        0
    } else {
        p.refundable_minor()
    };
    let mut de48 = Vec::new();
    let _ = tlv::push(&mut de48, b"ST", status.as_str().as_bytes());
    let extra = (
        format!("{:012}", root.amount_minor),
        String::from_utf8_lossy(&de48).into_owned(),
        format!("{refundable:012}"),
    );
    let answer = Answer {
        rc: Rc::APPROVED,
        rrn: Some(root.rrn.clone()),
        auth: None,
    };
    (answer, Some(extra))
}

impl Engine {
    /// 0600: where a payment stands, by DE90 or by DE48 `OR`. Always answered afresh.
    /// Returns the answer and the 0610's extra elements (DE4, DE48 ST, DE54).
    pub(crate) async fn status(
        &self,
        msg: &Message,
        merchant: &Merchant,
    ) -> (Answer, Option<(String, String, String)>) {
        let (by_ref, order_ref) = match status_query(msg) {
            Ok(q) => q,
            Err(rc) => return (Answer::refused(rc), None),
        };
        let root = match (&by_ref, &order_ref) {
            (Some(r), _) => {
                let terminal = String::from_utf8_lossy(msg.raw(41).unwrap_or(b""))
                    .trim_end()
                    .to_string();
                self.store.payment_of(&merchant.id, &terminal, r).await
            }
            (None, Some(or)) => self.store.payment_by_order_ref(&merchant.id, or).await,
            (None, None) => Ok(None),
        };
        match root {
            Err(e) => (self.db_error(e), None),
            Ok(None) => (Answer::refused(Rc::NO_ORIGINAL), None),
            Ok(Some(root)) => status_answer(&root),
        }
    }
}
