"""Small repository tools: gen_manifests (write k8s/base's generated manifests from
dkd_core.launch's defaults), lint_manifests (render every kustomization with `kubectl
kustomize` and validate it), mutate (mutation testing of the method's modules) and
golden_gradients (rewrite the golden gradients from the authors' code)."""
