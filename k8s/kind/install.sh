#!/usr/bin/env bash
# Provision a local kind cluster for DKD (CPU only), every component at a pinned version:
#
#   1. the kind cluster of k8s/kind/cluster.yaml (unless it exists)
#   2. the DKD image, loaded into the nodes (when DKD_IMAGE is set)
#   3. Kubeflow Pipelines standalone, platform-agnostic manifests (namespace kubeflow)
#   4. Kubeflow training operator v1, standalone manifests (PyTorchJob)
#   5. Kubeflow Trainer v2 with its runtimes and ours, dkd-torch-distributed (TrainJob) - only
#      with INSTALL_TRAINER_V2=1 (the kind end-to-end test sets it: it runs both launchers)
#   6. the prometheus-operator CRDs PodMonitor and ServiceMonitor (CRDs only, no Prometheus)
#   7. the Secret minio-credentials, with random keys, unless it exists
#   8. k8s/overlays/kind (MinIO, buckets, RBAC, training pod settings, PodMonitor, dashboard)
#
# and waits until everything is Available / Complete. Needs docker (engine running), kind,
# kubectl and git (kubectl fetches the remote kustomizations with git).
#
#   DKD_IMAGE=dkd:0.1.0-abc-cpu bash k8s/kind/install.sh       # or: make kind-up
set -euo pipefail

KIND_CLUSTER="${KIND_CLUSTER:-dkd}"
KIND_VERSION="v0.33.0"                                    # the kind release cluster.yaml is for
# Same as the kfp SDK pin in pyproject.toml (kfp==2.17.0). Its object store is SeaweedFS behind
# the S3 API: Service seaweedfs in kubeflow, port 9000 (-> 8333), Secret
# mlpipeline-minio-artifact (keys accesskey/secretkey); KFP 2.16 removed minio-service.
KFP_VERSION="${KFP_VERSION:-2.17.0}"
TRAINING_OPERATOR_VERSION="${TRAINING_OPERATOR_VERSION:-v1.9.4}"   # PyTorchJob kubeflow.org/v1
INSTALL_TRAINER_V2="${INSTALL_TRAINER_V2:-0}"
TRAINER_VERSION="${TRAINER_VERSION:-v2.3.0}"              # TrainJob trainer.kubeflow.org/v1alpha1
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.91.0}"
DKD_IMAGE="${DKD_IMAGE:-}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-900s}"
NAMESPACE="kubeflow"                                      # k8s/overlays/kind's namespace

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONTEXT="kind-${KIND_CLUSTER}"

die() { echo "install.sh: error: $*" >&2; exit 1; }
step() { echo; echo "==> $*"; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"; }

need docker "install Docker (https://docs.docker.com/engine/install/)"
docker info >/dev/null 2>&1 || die "the Docker engine is not running or not reachable ('docker info' failed)"
need kind "install kind ${KIND_VERSION} (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
need kubectl "install kubectl >= 1.31 (https://kubernetes.io/docs/tasks/tools/)"
need git "install git: kubectl fetches the Kubeflow manifests with it"

found_kind="$(kind version 2>/dev/null | awk '{print $2}')"
if [[ "${found_kind}" != "${KIND_VERSION}" ]]; then
  echo "install.sh: warning: kind ${found_kind:-unknown} found, cluster.yaml's node image is built for ${KIND_VERSION}" >&2
fi

k() { kubectl --context "${CONTEXT}" "$@"; }

step "kind cluster ${KIND_CLUSTER}"
if kind get clusters 2>/dev/null | grep -qx "${KIND_CLUSTER}"; then
  echo "exists: reusing it"
else
  kind create cluster --name "${KIND_CLUSTER}" --config "${REPO_ROOT}/k8s/kind/cluster.yaml" --wait 180s
fi
k cluster-info >/dev/null

if [[ -n "${DKD_IMAGE}" ]]; then
  step "loading ${DKD_IMAGE} into the nodes"
  docker image inspect "${DKD_IMAGE}" >/dev/null 2>&1 \
    || die "image ${DKD_IMAGE} is not in the local Docker engine: build it first (make image-cpu)"
  kind load docker-image --name "${KIND_CLUSTER}" "${DKD_IMAGE}"
fi

step "Kubeflow Pipelines ${KFP_VERSION} (standalone, platform-agnostic)"
k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
k wait --for=condition=Established --timeout=120s crd/applications.app.k8s.io
k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"

step "Kubeflow training operator ${TRAINING_OPERATOR_VERSION} (standalone)"
k apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/standalone?ref=${TRAINING_OPERATOR_VERSION}"
k wait --for=condition=Established --timeout=120s crd/pytorchjobs.kubeflow.org

if [[ "${INSTALL_TRAINER_V2}" == "1" ]]; then
  step "Kubeflow Trainer ${TRAINER_VERSION} (manager, JobSet, runtimes)"
  k apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=${TRAINER_VERSION}"
  k wait --for=condition=Established --timeout=120s crd/trainjobs.trainer.kubeflow.org
  k -n kubeflow-system wait --for=condition=Available --timeout="${WAIT_TIMEOUT}" deployment --all
  k apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=${TRAINER_VERSION}"
  # Our ClusterTrainingRuntime dkd-torch-distributed (the TrainJobs' default runtime).
  k apply --server-side -k "${REPO_ROOT}/k8s/base/trainer-runtime"
fi

step "prometheus-operator ${PROMETHEUS_OPERATOR_VERSION} CRDs (PodMonitor, ServiceMonitor)"
crd_base="https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/${PROMETHEUS_OPERATOR_VERSION}/example/prometheus-operator-crd"
for crd in podmonitors servicemonitors; do
  k apply --server-side -f "${crd_base}/monitoring.coreos.com_${crd}.yaml"
  k wait --for=condition=Established --timeout=120s "crd/${crd}.monitoring.coreos.com"
done

step "Secret ${NAMESPACE}/minio-credentials"
if k -n "${NAMESPACE}" get secret minio-credentials >/dev/null 2>&1; then
  echo "exists: keeping it"
else
  random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  # Random keys, created here and never written to a file; read them back with kubectl.
  k -n "${NAMESPACE}" create secret generic minio-credentials \
    --from-literal=AWS_ACCESS_KEY_ID="dkd-$(random_hex 6)" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$(random_hex 24)" \
    --from-literal=S3_ENDPOINT="http://dkd-minio.${NAMESPACE}.svc.cluster.local:9000"
fi

step "DKD (k8s/overlays/kind)"
k apply -k "${REPO_ROOT}/k8s/overlays/kind"

step "waiting for the deployments in ${NAMESPACE} (up to ${WAIT_TIMEOUT})"
k -n "${NAMESPACE}" wait --for=condition=Available --timeout="${WAIT_TIMEOUT}" deployment --all
k -n "${NAMESPACE}" wait --for=condition=Complete --timeout="${WAIT_TIMEOUT}" job/dkd-minio-buckets

cat <<EOM

DKD is deployed on kind cluster '${KIND_CLUSTER}' (context ${CONTEXT}, namespace ${NAMESPACE}).
  KFP API and UI:  kubectl --context ${CONTEXT} -n ${NAMESPACE} port-forward svc/ml-pipeline-ui 8080:80
                   then open http://localhost:8080 (the API answers there too)
  KFP's store:     kubectl --context ${CONTEXT} -n ${NAMESPACE} port-forward svc/seaweedfs 9000:9000
                   (the pipelines' default s3_endpoint, http://seaweedfs.kubeflow:9000; keys in
                   the Secret mlpipeline-minio-artifact, accesskey/secretkey)
  Our MinIO (S3):  kubectl --context ${CONTEXT} -n ${NAMESPACE} port-forward svc/dkd-minio 9000:9000
                   (keys in the Secret minio-credentials)
EOM
