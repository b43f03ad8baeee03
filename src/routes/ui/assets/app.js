// cakelink dashboard: small progressive touches. Every page works without this file.
(function () {
  "use strict";

  // Copy buttons: copy the value of the input they name.
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var input = document.getElementById(button.getAttribute("data-copy"));
      if (!input) return;
      var done = function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(done, function () {
          input.select();
        });
      } else {
        input.select();
        try { if (document.execCommand("copy")) done(); } catch (e) { /* selected: copy by hand */ }
      }
    });
  });

  // Read-only URL fields select all on focus, for copying by hand.
  document.querySelectorAll(".copyable input[readonly]").forEach(function (input) {
    input.addEventListener("focus", function () { input.select(); });
  });

  // Forms that ask before they delete.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });

  // The event log refreshes itself while the box is ticked (remembered per browser).
  var box = document.getElementById("autorefresh");
  if (box) {
    box.parentElement.hidden = false;
    var key = "cakelink.autorefresh";
    var timer = null;
    var apply = function () {
      if (timer) { clearTimeout(timer); timer = null; }
      if (box.checked) timer = setTimeout(function () { window.location.reload(); }, 10000);
    };
    try { box.checked = window.localStorage.getItem(key) === "1"; } catch (e) { /* storage off */ }
    box.addEventListener("change", function () {
      try { window.localStorage.setItem(key, box.checked ? "1" : "0"); } catch (e) { /* storage off */ }
      apply();
    });
    apply();
  }
})();
