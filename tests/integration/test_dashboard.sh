# The dashboard page in headless Chromium against canned API answers: every
# scenario of dashboard_check.sh (live, sparse, empty, API down, a control
# page proving console errors are seen). Screenshots go to $ARTIFACTS.
sh "$IT_DIR/dashboard_check.sh" "$ARTIFACTS/dashboard" || fail "dashboard_check.sh"
