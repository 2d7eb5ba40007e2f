//! Injected failures of the fakes (`fake_kube`, `fake_grafana`): a matching request is answered
//! with the fault's status before it reaches the fake's state.

/// Makes matching requests fail with `status` before they reach the fake's state.
#[derive(Debug, Clone)]
pub struct Fault {
    status: u16,
    remaining: u32,
    method: Option<String>,
    path_contains: Option<String>,
}

impl Fault {
    /// The next `times` matching requests fail with `status` (500, 409, 429, 503, ...).
    pub fn next(times: u32, status: u16) -> Fault {
        Fault {
            status,
            remaining: times,
            method: None,
            path_contains: None,
        }
    }

    /// Every matching request fails with `status`.
    pub fn always(status: u16) -> Fault {
        Fault::next(u32::MAX, status)
    }

    /// Only requests with this method (`PATCH`, `POST`).
    pub fn method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests whose path contains this.
    pub fn path_contains(mut self, part: &str) -> Fault {
        self.path_contains = Some(part.to_owned());
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.remaining > 0
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

/// The status of the first fault in `faults` that matches the request, which it uses up once.
pub(crate) fn fire(faults: &mut [Fault], method: &str, path: &str) -> Option<u16> {
    let fault = faults.iter_mut().find(|f| f.matches(method, path))?;
    fault.remaining -= 1;
    Some(fault.status)
}
