"""The PR comment command parser: valid forms, refusals, and injection attempts."""

from __future__ import annotations

import pytest

from runner.events.commands import Command, CommandError
from runner.events.comment_parser import PLAN_FLAGS, help_text, parse_comment


def ok(body: str) -> Command:
    result = parse_comment(body)
    assert isinstance(result, Command), result
    return result


def refused(body: str) -> CommandError:
    result = parse_comment(body)
    assert isinstance(result, CommandError), result
    return result


# --- valid forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("gitops plan", Command("plan")),
        ("gitops apply", Command("apply")),
        ("gitops unlock", Command("unlock")),
        ("gitops help", Command("help")),
        ("gitops plan -p network", Command("plan", project="network")),
        ("gitops plan --project network", Command("plan", project="network")),
        ("gitops plan --project=network", Command("plan", project="network")),
        ("gitops plan -p=network", Command("plan", project="network")),
        ("gitops plan -d envs/prod", Command("plan", dir="envs/prod")),
        ("gitops plan --dir envs/prod", Command("plan", dir="envs/prod")),
        ("gitops plan --dir=envs/prod", Command("plan", dir="envs/prod")),
        ("gitops plan -w staging", Command("plan", workspace="staging")),
        ("gitops plan --workspace staging", Command("plan", workspace="staging")),
        (
            "gitops plan -d envs/prod -w blue",
            Command("plan", dir="envs/prod", workspace="blue"),
        ),
        (
            "gitops plan -p network -w blue",
            Command("plan", project="network", workspace="blue"),
        ),
        ("gitops apply -p network", Command("apply", project="network")),
        ("gitops apply -d envs/prod -w blue", Command("apply", dir="envs/prod", workspace="blue")),
        ("gitops apply --workspace=blue", Command("apply", workspace="blue")),
        ("gitops plan -p envs/prod", Command("plan", project="envs/prod")),
        ("gitops plan --", Command("plan")),
    ],
)
def test_valid_forms(body: str, expected: Command) -> None:
    assert ok(body) == expected


def test_atlantis_is_a_synonym() -> None:
    assert ok("atlantis plan -d envs/prod") == Command("plan", dir="envs/prod")
    assert ok("Atlantis apply") == Command("apply")


@pytest.mark.parametrize("body", ["GITOPS PLAN", "GitOps Plan", "gitops PLAN", "ATLANTIS plan"])
def test_keyword_and_command_are_case_insensitive(body: str) -> None:
    assert ok(body) == Command("plan")


def test_options_are_case_sensitive_values_kept() -> None:
    assert ok("gitops plan -p Network").project == "Network"
    assert isinstance(parse_comment("gitops plan -P network"), CommandError)


@pytest.mark.parametrize(
    "body",
    [
        "   gitops plan -p network",
        "\tgitops   plan    -p   network   ",
        "\n\n  gitops plan -p network\n",
        "gitops plan -p network\r\n",
    ],
)
def test_extra_whitespace(body: str) -> None:
    assert ok(body) == Command("plan", project="network")


def test_only_the_first_line_counts() -> None:
    body = "gitops plan -p network\nThis is why: -- -chdir=/ ; rm -rf /\ngitops apply"
    assert ok(body) == Command("plan", project="network")
    windows = "gitops apply\r\n\r\nplease, after the review"
    assert ok(windows) == Command("apply")


def test_a_command_on_a_later_line_is_not_for_us() -> None:
    assert parse_comment("Looks good!\ngitops apply") is None


@pytest.mark.parametrize(
    ("dir_arg", "normalised"),
    [
        (".", "."),
        ("./", "."),
        ("./envs/prod", "envs/prod"),
        ("envs//prod/", "envs/prod"),
        ("envs/./prod", "envs/prod"),
        ("modules/vpc-v2.1", "modules/vpc-v2.1"),
    ],
)
def test_dir_is_normalised(dir_arg: str, normalised: str) -> None:
    assert ok(f"gitops plan -d {dir_arg}").dir == normalised


# --- not addressed to us -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "",
        "   \n  ",
        "LGTM",
        "Please run gitops plan",
        "gitopsfoo plan",
        "atlantisplan",
        "gitops: works for me",
        "> gitops plan",
        "`gitops plan`",
        "@gitops plan",
        "don't forget the quote",  # unbalanced quote in a normal comment is not an error
    ],
)
def test_not_for_us(body: str) -> None:
    assert parse_comment(body) is None


# --- refusals ------------------------------------------------------------------------------


def test_project_and_dir_are_exclusive() -> None:
    error = refused("gitops plan -p network -d envs/prod")
    assert "not both" in error.reason
    assert "gitops plan [-p PROJECT | -d DIR]" in error.message
    assert isinstance(parse_comment("gitops apply --dir x --project y"), CommandError)


@pytest.mark.parametrize("body", ["gitops destroy", "gitops plans", "gitops is great", "gitops"])
def test_unknown_or_missing_command(body: str) -> None:
    error = refused(body)
    # Without a known command, the usage of every command is shown.
    for usage in ("gitops plan", "gitops apply", "gitops unlock", "gitops help"):
        assert usage in error.message


def test_unknown_command_is_named_in_the_message() -> None:
    assert "`destroy`" in refused("gitops destroy").message


@pytest.mark.parametrize(
    "body",
    [
        "gitops plan -x foo",
        "gitops plan --verbose",
        "gitops plan network",
        "gitops plan -p",
        "gitops plan -p a -p b",
        "gitops plan -w a --workspace b",
        "gitops unlock -p network",
        "gitops help me",
        "gitops apply -- -target=aws_instance.web",
        "gitops unlock --",
    ],
)
def test_bad_options(body: str) -> None:
    refused(body)


@pytest.mark.parametrize(
    "dir_arg",
    ["..", "../other", "envs/../../etc", "a/..", "/etc", "/", "~/x", "envs\\prod", "C:/x", "a b"],
)
def test_dir_must_stay_inside_the_repository(dir_arg: str) -> None:
    refused(f"gitops plan -d '{dir_arg}'")


@pytest.mark.parametrize("name", ["a b", "-x", "$(id)", "x;y", ".hidden", "a`b`", "é"])
def test_project_and_workspace_are_plain_names(name: str) -> None:
    refused(f"gitops plan -p '{name}'")
    refused(f"gitops plan -w '{name}'")


def test_workspace_may_not_contain_a_slash() -> None:
    refused("gitops plan -w a/b")


def test_unbalanced_quotes_are_refused_with_usage() -> None:
    error = refused("gitops plan -p 'network")
    assert "Usage" in error.message


# --- Terraform flags after -- --------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("-target=aws_instance.web", ("-target=aws_instance.web",)),
        ("-target aws_instance.web", ("-target=aws_instance.web",)),
        ("-target=module.vpc", ("-target=module.vpc",)),
        ("-target=data.aws_ami.ubuntu", ("-target=data.aws_ami.ubuntu",)),
        ("-target='aws_instance.web[0]'", ("-target=aws_instance.web[0]",)),
        (
            """-target='module.app["eu-west-1"].aws_instance.web["a b"]'""",
            ('-target=module.app["eu-west-1"].aws_instance.web["a b"]',),
        ),
        ("-replace=aws_instance.web", ("-replace=aws_instance.web",)),
        ("-replace aws_instance.web", ("-replace=aws_instance.web",)),
        ("-var 'region=eu-west-1'", ("-var=region=eu-west-1",)),
        ("-var region=eu-west-1", ("-var=region=eu-west-1",)),
        ("-var=region=eu-west-1", ("-var=region=eu-west-1",)),
        ("'-var=region=eu-west-1'", ("-var=region=eu-west-1",)),
        ("-var 'name=a b c'", ("-var=name=a b c",)),
        ("""-var 'azs=["a","b"]'""", ('-var=azs=["a","b"]',)),
        ("-var 'count=-1'", ("-var=count=-1",)),
        ("-var 'empty='", ("-var=empty=",)),
        ("-refresh=false", ("-refresh=false",)),
        ("-refresh true", ("-refresh=true",)),
        ("-destroy", ("-destroy",)),
        ("-refresh-only", ("-refresh-only",)),
        ("-parallelism=4", ("-parallelism=4",)),
        ("-parallelism 20", ("-parallelism=20",)),
        ("-compact-warnings", ("-compact-warnings",)),
        ("--target=aws_instance.web", ("-target=aws_instance.web",)),
        (
            "-target=a.b -var x=1 -destroy -compact-warnings -parallelism 2",
            ("-target=a.b", "-var=x=1", "-destroy", "-compact-warnings", "-parallelism=2"),
        ),
    ],
)
def test_allowlisted_flags_are_normalised(flags: str, expected: tuple[str, ...]) -> None:
    assert ok(f"gitops plan -d envs/prod -- {flags}").extra_args == expected


@pytest.mark.parametrize(
    "flags",
    [
        "-chdir=/",
        "-chdir /",
        "-state=/tmp/x.tfstate",
        "-out=/tmp/plan",
        "-lock=false",
        "-lock-timeout=0s",
        "-var-file=/etc/passwd",
        "-input=true",
        "-backend-config=x",
        "-json",
        "-no-color",
        "apply",
        "&&",
        ";rm",
        "; rm -rf /",
        "&& rm -rf /",
        "| cat /etc/passwd",
        "-target=a.b ; rm -rf /",
        "-target=a.b && curl evil",
    ],
)
def test_forbidden_flags_are_refused_with_the_allowlist(flags: str) -> None:
    error = refused(f"gitops plan -- {flags}")
    for spec in PLAN_FLAGS.values():
        assert spec.form in error.message


@pytest.mark.parametrize(
    "flags",
    [
        "-target='$(whoami)'",
        "-target=`whoami`",
        "-target='a.b[\"$(id)\"]'",
        "-target='a.b[\"`id`\"]'",
        "-target='a.b; rm -rf /'",
        "-target=../../etc",
        "-target",
        "-replace=",
        "-var 'x=$(whoami)'",
        "-var 'x=`id`'",
        "-var 'x=${file(\"/etc/passwd\")}'",
        "-var 'x=a;rm -rf /'",
        "-var 'x=a && b'",
        "-var 'x=a | b'",
        "-var 'x=a > /tmp/f'",
        "-var novalue",
        "-var '1bad=x'",
        "-var '=x'",
        "-var",
        "-refresh=maybe",
        "-refresh",
        "-parallelism=0",
        "-parallelism=-1",
        "-parallelism=1000",
        "-parallelism=many",
        "-destroy=true",
        "-compact-warnings=1",
        "-destroy -refresh-only",
    ],
)
def test_bad_flag_values_and_injection_attempts_are_refused(flags: str) -> None:
    refused(f"gitops plan -- {flags}")


def test_injection_before_dashdash_is_refused() -> None:
    refused("gitops plan; rm -rf /")
    refused("gitops plan && rm -rf /")
    refused("gitops plan -p $(whoami)")
    refused("gitops plan -d `id`")
    refused("gitops plan -p 'x\ny'")


def test_unquoted_string_key_gets_a_quoting_hint() -> None:
    error = refused('gitops plan -- -target=aws_instance.web["a"]')
    assert "single quotes" in error.message


def test_echoed_input_cannot_break_out_of_code_spans() -> None:
    error = refused("gitops plan -- '-chdir=`@org/team`'")
    assert "@org/team" in error.message
    assert "`@org/team`" not in error.message


def test_long_echoed_input_is_truncated() -> None:
    error = refused("gitops plan -- -chdir=" + "x" * 500)
    assert "x" * 100 not in error.message


def test_very_long_line_is_refused() -> None:
    refused("gitops plan -- " + "-compact-warnings " * 200)


# --- help ----------------------------------------------------------------------------------


def test_help_text_lists_commands_options_and_flags() -> None:
    text = help_text()
    for word in ("gitops plan", "gitops apply", "gitops unlock", "gitops help", "atlantis"):
        assert word in text
    for option in ("--project", "--dir", "--workspace", "-p", "-d", "-w"):
        assert option in text
    for spec in PLAN_FLAGS.values():
        assert spec.form in text


def test_help_text_table_escapes_pipes() -> None:
    table_rows = [line for line in help_text().splitlines() if line.startswith("| `gitops")]
    assert len(table_rows) == 9  # every command
    for row in table_rows:
        # Three unescaped pipes: the cell borders only.
        assert row.replace("\\|", "").count("|") == 3


# --- import, state rm, version, cancel ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "atlantis import -p web terraform_data.x i-0abc",
            Command("import", project="web", args=("terraform_data.x", "i-0abc")),
        ),
        (
            "gitops import -d stacks/web -w staging 'aws_iam_role.r[\"a\"]' arn:aws:iam::1:role/a",
            Command(
                "import",
                dir="stacks/web",
                workspace="staging",
                args=('aws_iam_role.r["a"]', "arn:aws:iam::1:role/a"),
            ),
        ),
        (
            "gitops import module.vm.google_compute_instance.this[0] projects/p/zones/z/vm",
            Command(
                "import",
                args=("module.vm.google_compute_instance.this[0]", "projects/p/zones/z/vm"),
            ),
        ),
        (
            "gitops state rm -p web terraform_data.a terraform_data.b",
            Command("state_rm", project="web", args=("terraform_data.a", "terraform_data.b")),
        ),
        ("gitops STATE RM x.y", Command("state_rm", args=("x.y",))),
        ("gitops version", Command("version")),
        ("atlantis cancel", Command("cancel")),
    ],
)
def test_state_and_housekeeping_commands_parse(body: str, expected: Command) -> None:
    assert ok(body) == expected


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("gitops import terraform_data.x", "needs a resource address and an id"),
        ("gitops import terraform_data.x a b", "needs a resource address and an id"),
        ("gitops import 'x.y; touch /tmp/pwned' id", "is not a Terraform resource address"),
        ("gitops import x.y 'id;touch${IFS}/tmp/pwned'", "is not a resource id"),
        ("gitops import x.y '$(touch /tmp/pwned)'", "is not a resource id"),
        ("gitops import x.y `id`", "is not a resource id"),
        ("gitops import x.y -lock=false", "Unknown option"),
        ("gitops import x.y id -- -var=a=b", "only accepted on `plan`"),
        ("gitops state", "Only `state rm` is supported"),
        ("gitops state list", "Only `state rm` is supported"),
        ("gitops state rm", "needs at least one resource address"),
        ("gitops state rm -state=/etc/passwd x.y", "Unknown option"),
        ("gitops state rm '-backup=/tmp/x'", "Unknown option"),
        ("gitops state rm x.y && rm -rf /", "Unknown option"),
        ("gitops state rm x.y && reboot", "is not a Terraform resource address"),
        ("gitops version now", "takes no arguments"),
        ("gitops cancel all", "takes no arguments"),
        ("gitops apply x.y", "Unknown argument"),
    ],
)
def test_state_command_injection_and_misuse_are_refused(body: str, reason: str) -> None:
    assert reason in refused(body).reason
