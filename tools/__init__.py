"""Small repository tools: kustomize_lite (render k8s/ without kustomize), lint_manifests,
mutate (mutation testing of the method's modules) and golden_gradients (rewrite the golden
gradients from the authors' code)."""
