# The dashboard page in headless Chromium against canned API answers: every
# scenario of dashboard_check.sh (live, sparse, empty, API down, a control
# page proving console errors are seen). Screenshots go to $ARTIFACTS; the
# live one (a training cluster, tokens/s above 0) also replaces
# docs/dashboard.png, the README's picture, so that it follows the page.
sh "$IT_DIR/dashboard_check.sh" "$ARTIFACTS/dashboard" || fail "dashboard_check.sh"
