# shellcheck shell=bash
# A throwaway kube-apiserver (+ etcd) on loopback for the oracle's self-check
# cases that need one (`"kube": "selfcheck"` in the case file), like
# tests/it/support/kube.rs starts for tests/it/oracle.rs: real binaries from
# scripts/build-kube.sh, certificates made here with openssl, RBAC on.
# Sourced by selfcheck.sh; needs openssl, curl and jq.
#
#   kube_start DIR       start etcd + kube-apiserver (state in DIR); sets KUBE_SERVER
#   kube_case IN OUT N   give case IN a namespace of its own (o<N>-<namespace>)
#                        with a ServiceAccount allowed what containerboot needs
#                        (its state Secret, events) and write it, with the
#                        oracle's "kube" part filled in, to OUT
#   kube_stop            kill both (by PID)

KUBE_PIDS=()
KUBE_DIR=
KUBE_SERVER=
KUBE_ADMIN_TOKEN=

kube_log() { printf 'selfcheck-kube: %s\n' "$*" >&2; }

# A TCP port on 127.0.0.1 that nothing listens on (a later bind may still race).
kube_free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

kube_api() { # METHOD PATH [JSON]
  local args=(-sS --fail-with-body --max-time 20 --cacert "$KUBE_DIR/ca.crt"
    -H "Authorization: Bearer $KUBE_ADMIN_TOKEN" -X "$1")
  if (($# > 2)); then args+=(-H 'Content-Type: application/json' --data-binary "$3"); fi
  curl "${args[@]}" "$KUBE_SERVER$2"
}

kube_start() {
  KUBE_DIR=$1
  local bins
  for tool in openssl curl jq; do
    command -v "$tool" >/dev/null || { kube_log "no $tool"; return 1; }
  done
  bins=$("$here/../../scripts/build-kube.sh") || { kube_log "scripts/build-kube.sh failed"; return 1; }
  eval "$bins" # KUBE_APISERVER_BIN, ETCD_BIN
  mkdir -p "$KUBE_DIR"
  (
    cd "$KUBE_DIR" || exit 1
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 2 -subj /CN=oracle-selfcheck-ca &&
      openssl req "${ec[@]}" -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver &&
      printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local' \
        'extendedKeyUsage=serverAuth' 'keyUsage=digitalSignature,keyEncipherment' >apiserver.ext &&
      openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile apiserver.ext -out apiserver.crt &&
      openssl ecparam -name prime256v1 -genkey -noout -out sa.key &&
      openssl ec -in sa.key -pubout -out sa.pub
  ) >"$KUBE_DIR/openssl.log" 2>&1 || { kube_log "openssl failed: $(tail -3 "$KUBE_DIR/openssl.log")"; return 1; }
  KUBE_ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s,oracle-selfcheck-admin,admin,"system:masters"\n' "$KUBE_ADMIN_TOKEN" >"$KUBE_DIR/tokens.csv"
  local attempt cport pport sport ok
  for attempt in 1 2 3; do
    cport=$(kube_free_port) && pport=$(kube_free_port) && sport=$(kube_free_port) || return 1
    "$ETCD_BIN" --name=default --data-dir="$KUBE_DIR/etcd$attempt" \
      --listen-client-urls="http://127.0.0.1:$cport" --advertise-client-urls="http://127.0.0.1:$cport" \
      --listen-peer-urls="http://127.0.0.1:$pport" --initial-advertise-peer-urls="http://127.0.0.1:$pport" \
      --initial-cluster="default=http://127.0.0.1:$pport" --unsafe-no-fsync --log-level=warn \
      </dev/null >"$KUBE_DIR/etcd.log" 2>&1 &
    KUBE_PIDS+=($!)
    "$KUBE_APISERVER_BIN" --etcd-servers="http://127.0.0.1:$cport" --bind-address=127.0.0.1 \
      --advertise-address=127.0.0.1 --secure-port="$sport" \
      --tls-cert-file="$KUBE_DIR/apiserver.crt" --tls-private-key-file="$KUBE_DIR/apiserver.key" \
      --client-ca-file="$KUBE_DIR/ca.crt" --token-auth-file="$KUBE_DIR/tokens.csv" \
      --service-account-issuer=https://kubernetes.default.svc \
      --service-account-key-file="$KUBE_DIR/sa.pub" --service-account-signing-key-file="$KUBE_DIR/sa.key" \
      --service-cluster-ip-range=10.0.0.0/24 --authorization-mode=RBAC --allow-privileged=true \
      --endpoint-reconciler-type=none --disable-admission-plugins=ServiceAccount \
      --cert-dir="$KUBE_DIR/apiserver-certs" </dev/null >"$KUBE_DIR/kube-apiserver.log" 2>&1 &
    KUBE_PIDS+=($!)
    KUBE_SERVER="https://127.0.0.1:$sport"
    ok=
    for _ in $(seq 600); do
      if [[ $(kube_api GET /readyz 2>/dev/null) == ok ]]; then ok=1; break; fi
      kill -0 "${KUBE_PIDS[-1]}" 2>/dev/null && kill -0 "${KUBE_PIDS[-2]}" 2>/dev/null || break
      sleep 0.1
    done
    [[ -n $ok ]] && return 0
    kube_log "start-up failed (attempt $attempt): kube-apiserver: $(tail -3 "$KUBE_DIR/kube-apiserver.log"); etcd: $(tail -3 "$KUBE_DIR/etcd.log")"
    kube_stop
  done
  return 1
}

kube_stop() {
  local pid
  for pid in "${KUBE_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${KUBE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  KUBE_PIDS=()
}

kube_case() {
  local in=$1 out=$2 n=$3 orig ns sa token
  orig=$(jq -r '.pod.metadata.namespace // "default"' "$in")
  ns="o$n-$orig"
  ns=${ns:0:63}
  ns=${ns%-}
  sa=$(jq -r '.pod.spec.serviceAccountName // .pod.spec.serviceAccount // "default"' "$in")
  kube_api POST /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}" >/dev/null &&
    kube_api POST "/api/v1/namespaces/$ns/serviceaccounts" \
      "{\"apiVersion\":\"v1\",\"kind\":\"ServiceAccount\",\"metadata\":{\"name\":\"$sa\"}}" >/dev/null &&
    kube_api POST "/apis/rbac.authorization.k8s.io/v1/namespaces/$ns/roles" \
      '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"tailscale-state"},"rules":[
        {"apiGroups":[""],"resources":["secrets"],"verbs":["get","create","update","patch"]},
        {"apiGroups":[""],"resources":["events"],"verbs":["create","patch","get"]}]}' >/dev/null &&
    kube_api POST "/apis/rbac.authorization.k8s.io/v1/namespaces/$ns/rolebindings" \
      "{\"apiVersion\":\"rbac.authorization.k8s.io/v1\",\"kind\":\"RoleBinding\",\"metadata\":{\"name\":\"tailscale-state\"},
        \"subjects\":[{\"kind\":\"ServiceAccount\",\"name\":\"$sa\",\"namespace\":\"$ns\"}],
        \"roleRef\":{\"kind\":\"Role\",\"name\":\"tailscale-state\",\"apiGroup\":\"rbac.authorization.k8s.io\"}}" >/dev/null &&
    token=$(kube_api POST "/api/v1/namespaces/$ns/serviceaccounts/$sa/token" \
      '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}' |
      jq -er .status.token) || return 1
  jq --arg server "$KUBE_SERVER" --arg token "$token" --rawfile ca "$KUBE_DIR/ca.crt" --arg ns "$ns" \
    '.kube = {server: $server, token: $token, caPEM: $ca, namespace: $ns} | .pod.metadata.namespace = $ns' \
    "$in" >"$out"
}
