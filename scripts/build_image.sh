#!/usr/bin/env bash
# Build tensorgate's container image with podman (the Dockerfile describes the two targets).
#
#   bash scripts/build_image.sh                         the CPU image, localhost/tensorgate:cpu
#   bash scripts/build_image.sh --target gpu            the GPU image (needs NVIDIA's registry and index)
#   eval "$(bash scripts/build_image.sh --print-env)"   podman's settings below, for podman run
#
# What it does (and prints as it goes):
# 1. Installs podman, buildah, runc and mmdebstrap with apt-get when one is missing (as root).
# 2. Unless CONTAINERS_CONF is set already, writes ~/.config/tensorgate/containers.conf (or under
#    TENSORGATE_PODMAN_CONF_DIR) and exports CONTAINERS_CONF naming it:
#    default ulimits podman can set without CAP_SYS_RESOURCE (nofile 20000, nproc 4096, or the hard
#    limits when lower) and the runc runtime (crun refuses a hybrid cgroup v1/v2 host). With
#    TENSORGATE_PODMAN_STORAGE=DIR (and no CONTAINERS_STORAGE_CONF) podman keeps its storage in DIR.
# 3. CPU target without --base-image: makes the base image localhost/tensorgate-base:bookworm-py
#    once (mmdebstrap: Debian bookworm minbase with python3, python3-venv and ca-certificates, then
#    podman import) and reuses it afterwards (--rebuild-base makes it anew, e.g. for updates).
# 4. Gives the RUN steps the host's package index settings, so that pip works behind a corporate
#    proxy or with a local index, and nothing of them ends up in the image:
#    - pip's configuration files (/etc/xdg/pip/pip.conf, /etc/pip.conf, ~/.pip/pip.conf,
#      ~/.config/pip/pip.conf, PIP_CONFIG_FILE) are merged in pip's order into one file, in which
#      every local path (file:// indexes, find-links, constraints, certificates) is renamed to
#      where it is mounted; PIP_CONFIG_FILE names it inside;
#    - the CA bundle pip uses (PIP_CERT, pip's cert, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,
#      SSL_CERT_FILE, else the system's) becomes PIP_CERT (for the GPU target's apt also the
#      system bundle's path);
#    - all of it is bind-mounted read-only (--volume) under /mnt, which every Debian and Ubuntu
#      image has empty, so no mount point is left behind in a layer;
#    - PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST, PIP_DEFAULT_TIMEOUT are
#      build arguments (declared only in the build stages, which are discarded);
#    - HTTP(S)_PROXY and NO_PROXY pass through (podman build --http-proxy, its default), and an
#      index or proxy on this machine's loopback makes the build use the host's network (--network
#      host), as does TENSORGATE_BUILD_NETWORK=host.
# Exit status 69 (EX_UNAVAILABLE): podman is missing and cannot be installed here, or cannot run.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly EX_UNAVAILABLE=69
readonly DEFAULT_CPU_BASE=localhost/tensorgate-base:bookworm-py
readonly IN_BUILD=/mnt

usage() {
  cat <<'EOF'
usage: build_image.sh [--target cpu|gpu] [--tag NAME] [--base-image IMAGE] [--rebuild-base]
                      [--no-cache] [--print-env] [-- PODMAN_BUILD_OPTIONS...]
  --target        cpu (default) or gpu (needs NVIDIA's registry and package index)
  --tag           the image's name (default localhost/tensorgate:TARGET)
  --base-image    cpu: a Debian image with python3 and python3-venv (default: made here, mmdebstrap);
                  gpu: a CUDA 13 + cuDNN 9 runtime image (default: the Dockerfile's CUDA_IMAGE)
  --rebuild-base  make the local CPU base image again although it exists
  --no-cache      build every step again
  --print-env     set podman up, print the environment it needs (export lines) and exit
Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR,
TENSORGATE_PODMAN_STORAGE, TENSORGATE_BUILD_NETWORK, CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, and
pip's settings and the proxies, as described at the top of this file.
EOF
}

log() { printf 'build_image: %s\n' "$*" >&2; }
# Print a command (credentials in URLs masked) and run it.
run() {
  local shown
  shown="$(printf '%q ' "$@" | sed -E 's#(://)[^/@ ]+@#\1***@#g')"
  log "+ $shown"
  "$@"
}
unavailable() {
  log "$*"
  exit "$EX_UNAVAILABLE"
}
temporary=()
cleanup() {
  if ((${#temporary[@]})); then
    rm -rf "${temporary[@]}"
  fi
}
trap cleanup EXIT

target=cpu
tag=""
base=""
rebuild_base=0
print_env=0
extra=()
while (($#)); do
  case "$1" in
    --target) target="${2:?--target needs a value}"; shift 2 ;;
    --target=*) target="${1#*=}"; shift ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --base-image) base="${2:?--base-image needs a value}"; shift 2 ;;
    --base-image=*) base="${1#*=}"; shift ;;
    --rebuild-base) rebuild_base=1; shift ;;
    --no-cache) extra+=(--no-cache); shift ;;
    --print-env) print_env=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) usage >&2; exit 2 ;;
  esac
done
case "$target" in
  cpu | gpu) ;;
  *) log "unknown target '$target' (cpu or gpu)"; exit 2 ;;
esac
tag="${tag:-localhost/tensorgate:$target}"

# --- 1. the tools -------------------------------------------------------------------------------------
missing=()
for tool in podman buildah runc mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v podman >/dev/null 2>&1 \
      || unavailable "podman is not installed, and installing it needs root (apt-get install podman buildah runc mmdebstrap)"
    log "not installed: ${missing[*]} (installing needs root); going on without"
  elif ! command -v apt-get >/dev/null 2>&1; then
    command -v podman >/dev/null 2>&1 || unavailable "podman is not installed, and there is no apt-get to install it"
    log "not installed: ${missing[*]} (no apt-get); going on without"
  else
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq podman buildah runc mmdebstrap >/dev/null; then
      run apt-get update -qq || true
      if ! apt-get install -y -qq podman buildah runc mmdebstrap >/dev/null; then
        command -v podman >/dev/null 2>&1 || unavailable "apt-get could not install podman"
      fi
    fi
  fi
fi

# --- 2. podman's configuration ------------------------------------------------------------------------
conf_dir="${TENSORGATE_PODMAN_CONF_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/tensorgate}"
# Write $2 to the file $1 unless it holds exactly that already.
write_conf() {
  if [[ ! -f "$1" ]] || [[ "$(cat "$1")" != "$2" ]]; then
    mkdir -p "$(dirname "$1")"
    printf '%s\n' "$2" >"$1"
    log "wrote $1"
  fi
}
# The lower of a wanted limit ($1) and a hard limit ($2; "unlimited" is no limit).
limit() {
  if [[ "$2" == unlimited ]] || (($2 >= $1)); then echo "$1"; else echo "$2"; fi
}
if [[ -z "${CONTAINERS_CONF:-}" ]]; then
  nofile="$(limit 20000 "$(ulimit -Hn)")"
  nproc="$(limit 4096 "$(ulimit -Hu)")"
  conf="# Written by tensorgate's scripts/build_image.sh (podman reads it through CONTAINERS_CONF).
[containers]
# Within the hard limits: podman cannot raise those without CAP_SYS_RESOURCE.
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
  if command -v runc >/dev/null 2>&1; then
    conf+="

[engine]
# crun refuses a hybrid cgroup v1/v2 layout; runc runs there (and everywhere else).
runtime = \"runc\""
  fi
  write_conf "$conf_dir/containers.conf" "$conf"
  export CONTAINERS_CONF="$conf_dir/containers.conf"
else
  log "CONTAINERS_CONF=$CONTAINERS_CONF is set: using it as it is"
fi
if [[ -n "${TENSORGATE_PODMAN_STORAGE:-}" && -z "${CONTAINERS_STORAGE_CONF:-}" ]]; then
  write_conf "$conf_dir/storage.conf" "# Written by tensorgate's scripts/build_image.sh (podman reads it through CONTAINERS_STORAGE_CONF).
[storage]
driver = \"overlay\"
graphroot = \"$TENSORGATE_PODMAN_STORAGE/storage\"
runroot = \"$TENSORGATE_PODMAN_STORAGE/run\""
  export CONTAINERS_STORAGE_CONF="$conf_dir/storage.conf"
fi
if ! podman_info="$(podman info 2>&1)"; then
  unavailable "podman cannot run here: $(tail -n 3 <<<"$podman_info")"
fi
log "podman $(podman version --format '{{.Client.Version}}'), CONTAINERS_CONF=$CONTAINERS_CONF"
if ((print_env)); then
  printf 'export CONTAINERS_CONF=%q\n' "$CONTAINERS_CONF"
  if [[ -n "${CONTAINERS_STORAGE_CONF:-}" ]]; then
    printf 'export CONTAINERS_STORAGE_CONF=%q\n' "$CONTAINERS_STORAGE_CONF"
  fi
  exit 0
fi

# --- 3. the CPU base image ----------------------------------------------------------------------------
base_args=()
if [[ "$target" == cpu ]]; then
  if [[ -z "$base" ]]; then
    base="$DEFAULT_CPU_BASE"
    if ((rebuild_base == 0)) && podman image exists "$base"; then
      log "base image $base exists: reusing it (--rebuild-base makes it anew)"
    else
      command -v mmdebstrap >/dev/null 2>&1 \
        || unavailable "mmdebstrap is needed to make the base image $base (or pass --base-image)"
      mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
      security="${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}"
      work="$(mktemp -d)"
      temporary+=("$work")
      log "making base image $base: Debian bookworm minbase with python3, python3-venv, ca-certificates"
      base_start=$SECONDS
      old_base="$(podman image inspect --format '{{.Id}}' "$base" 2>/dev/null || true)"
      # Documentation, manual pages and translations are left out (copyright files stay).
      run mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        '--dpkgopt=path-exclude=/usr/share/doc/*' '--dpkgopt=path-include=/usr/share/doc/*/copyright' \
        '--dpkgopt=path-exclude=/usr/share/man/*' '--dpkgopt=path-exclude=/usr/share/info/*' \
        '--dpkgopt=path-exclude=/usr/share/locale/*' \
        bookworm "$work/base.tar" \
        "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
        "deb $security bookworm-security main" </dev/null
      run podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        "$work/base.tar" "$base" >/dev/null
      rm -rf "$work"
      log "made base image $base in $((SECONDS - base_start)) s"
      if [[ -n "$old_base" ]] && podman image rm "$old_base" >/dev/null 2>&1; then
        log "removed the previous base image ${old_base:0:12}"
      fi
    fi
  fi
  base_args=(--build-arg "CPU_BASE_IMAGE=$base")
  # podman info works where containers cannot run (e.g. inside an unprivileged container): try one.
  if ! tried="$(podman run --rm --network none "$base" /bin/true 2>&1)"; then
    unavailable "podman cannot run a container here: $(tail -n 3 <<<"$tried")"
  fi
elif [[ -n "$base" ]]; then
  base_args=(--build-arg "CUDA_IMAGE=$base")
fi

# --- 4. the host's package index settings, for the RUN steps only -------------------------------------
# The plan, one tab-separated line each: "mount SRC DST", "arg NAME=VALUE", "ca FILE", "loopback".
# It writes the merged pip configuration to the staging directory ($1, mounted at $2), and makes
# there the mount points of what is mounted below it.
index_plan() {
  python3 - "$1" "$2" <<'EOF'
import configparser
import os
import sys
from urllib.parse import urlsplit

stage, inside = sys.argv[1], sys.argv[2]
env = os.environ
DIR_KEYS = {"index-url", "extra-index-url", "find-links"}  # may name a directory
FILE_KEYS = {"constraint", "requirement", "cert", "client-cert"}
mounts: set[str] = set()
loopback = False


def is_loopback(url: str) -> bool:
    try:
        host = urlsplit(url if "://" in url else "http://" + url).hostname or ""
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def rewrite(token: str, key: str) -> str:
    """A local path or file:// URL becomes the place it is mounted at; the rest stays as it is."""
    global loopback
    is_url = token.startswith("file://")
    path = token[len("file://") :] if is_url else token
    if "://" in token and not is_url:
        loopback = loopback or is_loopback(token)
        return token
    if not path.startswith("/") or not os.path.exists(path):
        return token
    path = os.path.normpath(path)
    source = path
    if key in DIR_KEYS:
        if os.path.isfile(source):  # a page or a wheel: its directory
            source = os.path.dirname(source)
        if key.endswith("index-url") and os.path.basename(source) == "simple":
            source = os.path.dirname(source)  # a PEP 503 tree links its files as ../../files/
    mounts.add(source)
    return ("file://" if is_url else "") + inside + "/host" + path


def rewrite_value(value: str, key: str) -> str:
    return " ".join(rewrite(token, key) for token in value.split()) if key in DIR_KEYS | FILE_KEYS else value


# pip's own order: global files, user files, then PIP_CONFIG_FILE; a later one wins (os.devnull: none).
config_file = env.get("PIP_CONFIG_FILE", "")
home = os.path.expanduser("~")
files = [f"{d}/pip/pip.conf" for d in (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":") if d]
files += ["/etc/pip.conf", f"{home}/.pip/pip.conf", f"{env.get('XDG_CONFIG_HOME') or home + '/.config'}/pip/pip.conf"]
files = [] if config_file == os.devnull else [*files, *([config_file] if config_file else [])]
merged = configparser.RawConfigParser()
read = []
for name in files:
    parser = configparser.RawConfigParser()
    try:
        if not parser.read(name):
            continue
    except configparser.Error as error:
        print(f"build_image: {name} is not read: {error}", file=sys.stderr)
        continue
    read.append(name)
    for section in parser.sections():
        if not merged.has_section(section):
            merged.add_section(section)
        for key, value in parser.items(section):
            key = key.lower().replace("_", "-")
            merged.set(section, key, rewrite_value(value, key))
with open(os.path.join(stage, "pip.conf"), "w") as out:
    out.write(f"# pip's configuration of the build host, merged from: {' '.join(read) or 'none'}\n")
    merged.write(out)
print(f"arg\tPIP_CONFIG_FILE={inside}/pip.conf")

for name, key in (("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                  ("PIP_FIND_LINKS", "find-links"), ("PIP_TRUSTED_HOST", ""), ("PIP_DEFAULT_TIMEOUT", "")):
    if env.get(name):
        print(f"arg\t{name}={rewrite_value(env[name], key)}")

ca_candidates = [env.get("PIP_CERT"), *(merged.get(s, "cert", fallback=None) for s in ("install", "global"))]
ca_candidates = [c for c in ca_candidates if c]
ca_candidates = [c[len(inside + "/host") :] if c.startswith(inside + "/host/") else c for c in ca_candidates]
ca_candidates += [env.get("REQUESTS_CA_BUNDLE"), env.get("CURL_CA_BUNDLE"), env.get("SSL_CERT_FILE"),
                  "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
ca = next((c for c in ca_candidates if c and os.path.isfile(c)), None)
if ca:
    print(f"arg\tPIP_CERT={rewrite(os.path.realpath(ca), 'cert')}")
    print(f"ca\t{os.path.realpath(ca)}")

for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    loopback = loopback or bool(env.get(name) and is_loopback(env[name]))
if loopback:
    print("loopback")

# The outermost directories only; mount points made in the staging directory.
for source in sorted(mounts):
    if any(source.startswith(other + "/") for other in mounts):
        continue
    point = os.path.join(stage, "host" + source)
    if os.path.isdir(source):
        os.makedirs(point, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(point), exist_ok=True)
        open(point, "a").close()
    print(f"mount\t{source}\t{inside}/host{source}")
EOF
}

stage="$(mktemp -d)"
temporary+=("$stage")
chmod 0755 "$stage"
mounts=(--volume "$stage:$IN_BUILD:ro")
build_args=()
network="${TENSORGATE_BUILD_NETWORK:-}"
if command -v python3 >/dev/null 2>&1; then
  plan="$(index_plan "$stage" "$IN_BUILD")"
  while IFS=$'\t' read -r what first second; do
    case "$what" in
      mount) mounts+=(--volume "$first:$second:ro") ;;
      arg) build_args+=(--build-arg "$first") ;;
      ca)
        # apt (the GPU target's) reads the system bundle; the CPU target runs no apt.
        if [[ "$target" == gpu ]]; then
          mounts+=(--volume "$first:/etc/ssl/certs/ca-certificates.crt:ro")
        fi ;;
      loopback) network="${network:-host}" ;;
    esac
  done <<<"$plan"
  log "pip's configuration for the build: $(head -n 1 "$stage/pip.conf" | sed 's/^.*, merged/merged/')"
else
  log "no python3 here to read pip's configuration: the build uses pip's defaults"
fi
if [[ -n "$network" ]]; then
  build_args+=(--network "$network")
fi
for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  if [[ -n "${!var:-}" ]]; then
    log "$var is set: podman passes it to the RUN steps (not into the image)"
  fi
done

# --- 5. the build -------------------------------------------------------------------------------------
old_id="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
log "building target $target as $tag"
start=$SECONDS
run podman build --target "$target" --tag "$tag" --file "$repo/Dockerfile" \
  "${base_args[@]}" "${build_args[@]}" "${mounts[@]}" "${extra[@]}" "$repo" >&2
new_id="$(podman image inspect --format '{{.Id}}' "$tag")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
  # What the tag named before, untagged now: removed unless a container still uses it.
  if podman image rm "$old_id" >/dev/null 2>&1; then
    log "removed the previous image ${old_id:0:12}"
  fi
fi
# The build stage's image stays as the cache of the next build; those of earlier builds go.
stale="$(podman images --noheading --filter dangling=true --filter "label=tensorgate.stage=$target-build" \
  --sort created --format '{{.ID}}' | tail -n +2)"
for id in $stale; do
  if podman image rm "$id" >/dev/null 2>&1; then
    log "removed the cache of an earlier build, ${id:0:12}"
  fi
done
size="$(podman image inspect --format '{{.Size}}' "$tag")"
log "built $tag (${new_id:0:12}, $((size / 1000000)) MB) in $((SECONDS - start)) s"
if [[ "$target" == cpu ]]; then
  log "run it: CONTAINERS_CONF=$CONTAINERS_CONF podman run --rm -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002 -v $repo/model_repo:/models:ro $tag"
else
  log "run it: podman run --rm --device nvidia.com/gpu=all -p 8001:8001 -p 8002:8002 -v $repo/model_repo:/models:ro $tag"
fi
