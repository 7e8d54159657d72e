"""Small repository tools: kustomize_lite (render k8s/ without kustomize), lint_manifests."""
