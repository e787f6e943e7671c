// Copy buttons, a progressive enhancement: without JavaScript the commands are plain read-only
// text boxes. "Copied" is announced only after the clipboard write succeeded.
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("copy-status");
  if (!navigator.clipboard) return;
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(button.dataset.copy);
        button.textContent = "Copied";
        if (status) status.textContent = "Copied to the clipboard";
        setTimeout(() => { button.textContent = "Copy"; }, 2000);
      } catch (e) {
        if (status) status.textContent = "Could not copy; select the text instead";
      }
    });
  }
});
