//! The positional words of the client commands. SERVICE comes first,
//! except with `--url`, where the server at the URL is the service and the
//! words start after it: `cortex call memory get_item item_id=1`, but
//! `cortex --url http://127.0.0.1:3001/mcp call echo message=hi`.

use std::collections::VecDeque;

use crate::exit::Failure;

/// The words of one command, taken in order.
pub(crate) struct Words {
    command: &'static str,
    words: VecDeque<String>,
    /// The `--url` server's service name, when given.
    url_service: Option<String>,
}

impl Words {
    pub(crate) fn new(
        command: &'static str,
        words: Vec<String>,
        url_service: Option<String>,
    ) -> Self {
        Self {
            command,
            words: words.into(),
            url_service,
        }
    }

    /// The service: the `--url` server, else the first word.
    pub(crate) fn service(&mut self) -> Result<String, Failure> {
        match self.optional_service() {
            Some(service) => Ok(service),
            None => Err(self.missing("SERVICE")),
        }
    }

    /// As [`Self::service`], for commands where it may be left out.
    pub(crate) fn optional_service(&mut self) -> Option<String> {
        match &self.url_service {
            Some(service) => Some(service.clone()),
            None => self.words.pop_front(),
        }
    }

    /// The next word, which must be there.
    pub(crate) fn required(&mut self, what: &str) -> Result<String, Failure> {
        self.words.pop_front().ok_or_else(|| self.missing(what))
    }

    /// The next word, if any.
    pub(crate) fn optional(&mut self) -> Option<String> {
        self.words.pop_front()
    }

    /// Every word left.
    pub(crate) fn rest(self) -> Vec<String> {
        self.words.into()
    }

    /// Nothing may be left.
    pub(crate) fn done(self) -> Result<(), Failure> {
        match self.words.front() {
            None => Ok(()),
            Some(extra) => Err(Failure::usage(format!(
                "unexpected argument `{extra}`{} (see `cortex {} --help`)",
                if self.url_service.is_some() {
                    "; with --url, leave SERVICE out"
                } else {
                    ""
                },
                self.command
            ))),
        }
    }

    fn missing(&self, what: &str) -> Failure {
        Failure::usage(format!(
            "missing {what} (see `cortex {} --help`)",
            self.command
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str], url: Option<&str>) -> Words {
        Words::new(
            "call",
            list.iter().map(|w| (*w).to_string()).collect(),
            url.map(str::to_string),
        )
    }

    #[test]
    fn service_first_unless_url() {
        let mut w = words(&["memory", "get_item", "item_id=1"], None);
        assert_eq!(w.service(), Ok("memory".into()));
        assert_eq!(w.required("TOOL"), Ok("get_item".into()));
        assert_eq!(w.rest(), vec!["item_id=1".to_string()]);

        let mut w = words(&["echo", "message=hi"], Some("http://h:1/mcp"));
        assert_eq!(w.service(), Ok("http://h:1/mcp".into()));
        assert_eq!(w.required("TOOL"), Ok("echo".into()));

        let mut w = words(&[], None);
        let missing = w.service().map_err(|f| f.message);
        assert_eq!(
            missing,
            Err("missing SERVICE (see `cortex call --help`)".into())
        );
        let mut w = words(&["a", "b"], Some("http://h:1"));
        assert!(w.optional().is_some());
        assert!(
            w.done()
                .is_err_and(|f| f.message.contains("leave SERVICE out"))
        );
    }
}
