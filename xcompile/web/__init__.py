"""The explainers in a web page: `xcompile export-web` (a static site on onnxruntime-web) and `xcompile view`
(the same site on 127.0.0.1). docs/deployment.md describes the site, where its runtime files come from, and the
test hooks of the page."""
