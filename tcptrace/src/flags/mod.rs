//! The command line: raw flags (`defs`), their values (`values`), and the
//! validated options they build (`build`). Only `main` uses this module;
//! the commands see their options, never the flags.
mod build;
mod defs;
mod values;

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};

use crate::{command::Command, error};

/// The command the process's arguments ask for. On `--help` and
/// `--version`, or a usage error (printed on one line), the exit code.
pub fn parse() -> Result<Command, ExitCode> {
    let cli = match defs::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = err.print();
            return Err(ExitCode::SUCCESS);
        }
        Err(err) => {
            // clap's message, on one line, without its "error: " prefix.
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            error::note!("tcptrace: {}", first.trim_start_matches("error: "));
            return Err(ExitCode::from(error::EXIT_USAGE));
        }
    };
    cli.into_command().map_err(|err| error::report(&err))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use tcptrace_common::{
        port_in, tcp_state::*, CONFIG_HANDOFF_ONLY, CONFIG_IPV4, CONFIG_IPV6, CONFIG_PID_FILTER,
        CONFIG_PORT_EITHER, CONFIG_RPORT_FILTER,
    };

    use super::{defs::Cli, values::*};
    use crate::command::Command;

    /// The probe configuration the default command (the tail) builds.
    fn tail_config(args: &[&str]) -> tcptrace_common::ProbeConfig {
        match Cli::try_parse_from(args).unwrap().into_command().unwrap() {
            Command::Tail(options) => match options.source {
                crate::source::Source::Live(probe) => probe.config,
                crate::source::Source::Capture(_) => unreachable!("no -r: live"),
            },
            _ => unreachable!("no subcommand: the tail"),
        }
    }

    #[test]
    fn port_lists() {
        assert_eq!(parse_port_list("80").unwrap(), PortList(vec![(80, 80)]));
        assert_eq!(
            parse_port_list("80, 443,8000-8002").unwrap(),
            PortList(vec![(80, 80), (443, 443), (8000, 8002)])
        );
        for bad in ["", "0", "65536", "http", "10-5", "1,,2", "-5", "5-"] {
            let err = parse_port_list(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("bad port list '{bad}'")), "{err}");
        }
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_ring_size("4096").unwrap(), 4096);
        assert_eq!(parse_ring_size("256k").unwrap(), 256 << 10);
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1K").is_err());
        assert!(parse_ring_size("2G").is_err());
        assert!(parse_ring_size("8X").is_err());
        assert!(parse_ring_size("M").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn config_from_flags() {
        let pid = std::process::id().to_string();
        let c = tail_config(&["tcptrace", "-6", "--lport", "8000-8001", "--pid", &pid]);
        assert_eq!(c.flags & (CONFIG_IPV4 | CONFIG_IPV6), CONFIG_IPV6);
        assert!(c.flags & CONFIG_HANDOFF_ONLY != 0);
        assert!(port_in(&c.lports, 8000) && port_in(&c.lports, 8001));
        assert!(!port_in(&c.lports, 7999) && !port_in(&c.lports, 8002));
        assert!(c.flags & CONFIG_RPORT_FILTER == 0);
        assert_eq!(
            (c.flags & CONFIG_PID_FILTER != 0, c.pid),
            (true, std::process::id())
        );
        assert!(c.wants(FIN_WAIT2, CLOSE) && !c.wants(CLOSE, SYN_SENT));

        let all = tail_config(&["tcptrace", "--all"]);
        assert!(all.wants(CLOSE, SYN_SENT) && all.flags & CONFIG_HANDOFF_ONLY == 0);
        assert_eq!(
            all.flags & (CONFIG_IPV4 | CONFIG_IPV6),
            CONFIG_IPV4 | CONFIG_IPV6
        );
    }

    #[test]
    fn either_port() {
        let c = tail_config(&["tcptrace", "--port", "8080"]);
        assert!(c.flags & CONFIG_PORT_EITHER != 0);
        assert!(port_in(&c.lports, 8080) && port_in(&c.rports, 8080));
        assert!(Cli::try_parse_from(["tcptrace", "--port", "1", "--lport", "2"]).is_err());
    }

    #[test]
    fn conflicting_families_are_rejected() {
        assert!(Cli::try_parse_from(["tcptrace", "-4", "-6"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "--lport", "x"]).is_err());
    }

    #[test]
    fn state_lists() {
        assert_eq!(
            parse_states("time_wait,CLOSE-WAIT").unwrap().0,
            vec![TIME_WAIT, CLOSE_WAIT]
        );
        assert_eq!(
            parse_states("all").unwrap().0.len(),
            crate::census::STATES.len()
        );
        assert!(parse_states("BOGUS").is_err());
    }

    #[test]
    fn serve_listens_on_loopback_unless_told() {
        let cli = Cli::try_parse_from(["tcptrace", "serve"]).unwrap();
        let Command::Serve(o) = cli.into_command().unwrap() else {
            unreachable!("serve")
        };
        assert_eq!(o.listen, "127.0.0.1:19435".parse().unwrap());
        assert!(o.listen.ip().is_loopback());
        assert_eq!(o.top_keys, 20);
        assert!(Cli::try_parse_from(["tcptrace", "serve", "--top-keys", "0"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "serve", "--listen", "localhost"]).is_err());
    }

    #[test]
    fn report_needs_files_and_an_output() {
        assert!(Cli::try_parse_from(["tcptrace", "report", "-o", "x.html"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "report", "-r", "a.tcpt"]).is_err());
        let cli = Cli::try_parse_from(["tcptrace", "report", "-r", "a", "-o", "b", "--top", "0"]);
        assert!(cli.unwrap().into_command().is_err());
    }

    #[test]
    fn missing_pid_is_a_usage_error() {
        let cli = Cli::try_parse_from(["tcptrace", "--pid", "999999999"]).unwrap();
        let Err(err) = cli.into_command() else {
            panic!("a pid that does not exist is refused");
        };
        let err = err.to_string();
        assert_eq!(err, "--pid 999999999: no such process");
    }

    /// Every subcommand's flags parse into its options (clap checks the
    /// types of a derive only when a command line uses them).
    #[test]
    fn every_subcommand_builds_its_options() {
        let lines: [&[&str]; 10] = [
            &["tcptrace", "--all", "--json", "-d", "1", "--wide"],
            &["tcptrace", "life", "--port", "80", "--no-header"],
            &[
                "tcptrace",
                "hist",
                "--by",
                "rport",
                "--metric",
                "lifetime,close_wait",
                "-i",
                "2",
            ],
            &[
                "tcptrace",
                "stuck",
                "--min-age",
                "3",
                "--once",
                "--json",
                "--limit",
                "5",
            ],
            &[
                "tcptrace",
                "census",
                "--by",
                "comm",
                "--states",
                "TIME_WAIT,CLOSE_WAIT",
                "--once",
            ],
            &["tcptrace", "doctor", "--observe", "2", "--json"],
            &[
                "tcptrace", "record", "-w", "x.tcpt", "-C", "10M", "-W", "4", "--port", "80",
            ],
            &[
                "tcptrace", "hist", "-r", "a.tcpt", "a.tcpt1", "--since", "30s", "--by", "rport",
            ],
            &[
                "tcptrace", "report", "-r", "a.tcpt", "a.tcpt1", "-o", "-", "--top", "3",
                "--until", "1m",
            ],
            &[
                "tcptrace",
                "serve",
                "--listen",
                "[::]:9999",
                "--top-keys",
                "50",
                "-i",
                "0.5",
            ],
        ];
        for line in lines {
            let command = Cli::try_parse_from(line)
                .unwrap_or_else(|e| panic!("{line:?}: {e}"))
                .into_command()
                .unwrap_or_else(|e| panic!("{line:?}: {e}"));
            match command {
                Command::Hist(o) => match o.source {
                    crate::source::Source::Capture(capture) => {
                        assert_eq!(capture.files.len(), 2);
                        assert_eq!(
                            capture.since,
                            Some(crate::replay::TimeBound::AfterStart(Duration::from_secs(
                                30
                            )))
                        );
                    }
                    crate::source::Source::Live(_) => {
                        assert_eq!(o.metrics.len(), 2);
                        assert_eq!(o.interval, Some(Duration::from_secs(2)));
                    }
                },
                Command::Record(o) => {
                    assert_eq!(o.rotation.max_bytes, Some(10 << 20));
                    assert_eq!(o.rotation.keep, Some(4));
                    assert_eq!(o.queue_bytes, 32 << 20);
                    assert_eq!(o.filters["port"], "80");
                }
                Command::Census(o) => assert_eq!(o.states, vec![TIME_WAIT, CLOSE_WAIT]),
                Command::Stuck(o) => {
                    assert!(o.refresh.once && o.output.json);
                    assert_eq!((o.limit, o.min_age), (5, Duration::from_secs(3)));
                }
                Command::Tail(o) => assert!(o.columns.wide && o.output.json),
                Command::Life(o) => assert!(!o.columns.header),
                Command::Doctor(o) => assert_eq!(o.observe, Some(Duration::from_secs(2))),
                Command::Serve(o) => {
                    assert_eq!(o.listen, "[::]:9999".parse().unwrap());
                    assert_eq!((o.top_keys, o.interval), (50, Duration::from_millis(500)));
                    assert_eq!(o.min_age, Duration::from_secs(5));
                    let c = o.probe.config;
                    assert!(c.flags & tcptrace_common::CONFIG_HISTOGRAMS != 0);
                    assert!(c.flags & tcptrace_common::CONFIG_NETNS_FILTER != 0);
                    assert!(c.wants(CLOSE, SYN_SENT));
                }
                Command::Report(o) => {
                    assert!(!Command::Report(o.clone()).loads_probe());
                    assert_eq!((o.files.len(), o.top), (2, 3));
                    assert_eq!(o.output, std::path::Path::new("-"));
                    assert_eq!(
                        o.until,
                        Some(crate::replay::TimeBound::AfterStart(Duration::from_secs(
                            60
                        )))
                    );
                }
            }
        }
    }
}
