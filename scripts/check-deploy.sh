#!/usr/bin/env bash
# Validates deploy/ with the real Prometheus and Alertmanager tools:
#   promtool check config / check rules / test rules, amtool check-config, the notification
#   templates, and one `amtool config routes test` per route of the production Alertmanager config.
# Run by tests/deploy_config.rs; runs on its own too. Exit 0: all passed; 1: a check failed;
# 2: a tool is missing.
#
# promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages, which
# scripts/alertmanager.sh install (and so scripts/test.sh) installs.
set -euo pipefail
cd "$(dirname "$0")/.."

PROM_CONFIG=deploy/prometheus/prometheus.yml
RULES=(deploy/prometheus/rules/*.rules.yml)
RULE_TESTS=(deploy/prometheus/tests/*.yml)
AM_CONFIG=deploy/alertmanager/alertmanager.yml
AM_TEMPLATES='deploy/alertmanager/templates/*.tmpl'

log() { echo "check-deploy.sh: $*"; }

missing=()
for tool in promtool amtool; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "error: ${missing[*]} not found. Install them with: sudo bash scripts/alertmanager.sh install" >&2
  log "       (Debian packages prometheus and prometheus-alertmanager; scripts/test.sh runs it)" >&2
  exit 2
fi

failures=0
# check NAME CMD...: run CMD quietly; on failure show its output.
check() {
  local name="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    log "ok    $name"
  else
    log "FAIL  $name: $*"
    printf '%s\n' "$out" | sed 's/^/    /'
    failures=$((failures + 1))
  fi
}

check "promtool check config $PROM_CONFIG" promtool check config "$PROM_CONFIG"
check "promtool check rules ${RULES[*]}" promtool check rules "${RULES[@]}"

rule_tests=0
for f in "${RULE_TESTS[@]}"; do
  rule_tests=$((rule_tests + $(grep -c '^  - name:' "$f")))
done
if out="$(promtool test rules "${RULE_TESTS[@]}" 2>&1)"; then
  log "ok    promtool test rules: $rule_tests tests in ${#RULE_TESTS[@]} files passed"
else
  log "FAIL  promtool test rules ${RULE_TESTS[*]}"
  printf '%s\n' "$out" | sed 's/^/    /'
  failures=$((failures + 1))
fi

check "amtool check-config $AM_CONFIG" amtool check-config "$AM_CONFIG"
# check-config parses the templates but does not execute them; rendering does.
check "amtool template render (slack title/text, pagerduty description)" \
  amtool template render --template.glob="$AM_TEMPLATES" \
  --template.text='{{ template "clusterwatch.slack.title" . }}{{ template "clusterwatch.slack.text" . }}{{ template "clusterwatch.pagerduty.description" . }}'

# Route cases: "expected receivers (in routing order)|label=value ...".
ROUTES=(
  "pagerduty|alertname=ClusterwatchCoordinatedCluster kind=coordinated_cluster severity=critical service=clusterwatch cluster_id=c-17"
  "slack-warning|alertname=ClusterwatchStageErrorRatioHigh severity=warning service=clusterwatch stage=embed"
  "slack-info|alertname=ClusterwatchOverRefusal kind=over_refusal severity=info service=clusterwatch cluster_id=c-4"
  "slack-launch|alertname=ClusterwatchLaunchDrift kind=launch_drift severity=warning service=clusterwatch surface=computer_use"
  "pagerduty,slack-launch|alertname=ClusterwatchCoordinatedCluster kind=coordinated_cluster severity=critical service=clusterwatch cluster_id=c-9 surface=computer_use"
  "slack-launch|alertname=ClusterwatchLaunchNewCluster kind=launch_new_cluster severity=info service=clusterwatch surface=computer_use cluster_id=c-5"
  "deadman|alertname=Watchdog severity=none"
  "pagerduty|alertname=ClusterwatchDown severity=critical service=clusterwatch job=clusterwatch"
  "slack-warning|alertname=ClusterwatchLaunchDrift kind=launch_drift severity=warning service=clusterwatch surface=chat"
  "slack-warning|alertname=SomethingUnexpected severity=unknown"
)
route_ok=0
route_failed=0
for case in "${ROUTES[@]}"; do
  expected="${case%%|*}"
  read -r -a labels <<<"${case#*|}"
  # --verify.receivers exits non-zero when the resolved receivers differ (order included).
  if out="$(amtool config routes test --config.file="$AM_CONFIG" --verify.receivers="$expected" "${labels[@]}" 2>&1)"; then
    log "ok    route ${labels[*]} -> $expected"
    route_ok=$((route_ok + 1))
  else
    log "FAIL  route ${labels[*]}: expected $expected"
    printf '%s\n' "$out" | grep -v 'overrides the --alertmanager.url' | sed 's/^/    /'
    route_failed=$((route_failed + 1))
  fi
done
log "route tests: $route_ok passed, $route_failed failed"
failures=$((failures + route_failed))

if [ "$failures" -gt 0 ]; then
  log "$failures check(s) failed"
  exit 1
fi
log "all checks passed"
