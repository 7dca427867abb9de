//! The slowest tests of a run, read from the JUnit report cargo-nextest
//! writes (`.ci/run` prints them after the tests).

/// One test case of a JUnit report.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The test binary (`classname`, e.g. `kubepulse::netlab`).
    pub binary: String,
    /// The test's name within its binary.
    pub name: String,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Every `<testcase>` of `xml`, in report order; a case without a name or
/// a readable time is an error naming it.
pub fn cases(xml: &str) -> Result<Vec<Case>, String> {
    xml.split("<testcase ")
        .skip(1)
        .map(|rest| {
            let tag = rest.split('>').next().unwrap_or(rest);
            let name =
                attribute(tag, "name").ok_or_else(|| format!("no name in <testcase {tag}>"))?;
            let seconds = attribute(tag, "time")
                .and_then(|t| t.parse::<f64>().ok())
                .ok_or_else(|| format!("no time in <testcase {tag}>"))?;
            Ok(Case {
                binary: attribute(tag, "classname").unwrap_or_default(),
                name,
                seconds,
            })
        })
        .collect()
}

/// The `n` slowest of `cases`, slowest first.
pub fn slowest(mut cases: Vec<Case>, n: usize) -> Vec<Case> {
    cases.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    cases.truncate(n);
    cases
}

/// The value of attribute `key` in a tag's text, unescaped (` name=`
/// does not match `classname=`: the marker starts with a space).
fn attribute(tag: &str, key: &str) -> Option<String> {
    let padded = format!(" {tag}");
    let marker = format!(" {key}=\"");
    let start = padded.find(&marker)? + marker.len();
    let len = padded[start..].find('"')?;
    Some(
        padded[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" time="9.5">
    <testsuite name="kubepulse::netlab" tests="2">
        <testcase name="netlab_a::fast" classname="kubepulse::netlab" timestamp="t" time="1.5"/>
        <testcase name="netlab_b::slow &amp; steady" classname="kubepulse::netlab" timestamp="t" time="7.25">
            <failure message="x"/>
        </testcase>
    </testsuite>
    <testsuite name="xtask" tests="1">
        <testcase name="junit::tests::x" classname="xtask" timestamp="t" time="0.75"/>
    </testsuite>
</testsuites>"#;

    #[test]
    fn every_case_is_read_with_its_binary_and_time() {
        let got = cases(REPORT).expect("cases");
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[1],
            Case {
                binary: "kubepulse::netlab".into(),
                name: "netlab_b::slow & steady".into(),
                seconds: 7.25
            }
        );
    }

    #[test]
    fn slowest_first_and_at_most_n() {
        let names: Vec<String> = slowest(cases(REPORT).expect("cases"), 2)
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["netlab_b::slow & steady", "netlab_a::fast"]);
    }

    #[test]
    fn a_case_without_a_time_is_an_error() {
        let err = cases(r#"<testcase name="x" classname="y"/>"#).expect_err("no time");
        assert!(err.contains("no time"), "{err}");
    }
}
