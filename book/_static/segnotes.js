/* segnotes: page behaviour that the theme lacks (see segnotes.css for the layout).
 *
 * 1. Output blocks are split into one inline-block <span class="sn-line"> per line, so that a
 *    line that wraps continues under a hanging indent deeper than its own indentation. The
 *    newlines stay between the spans: copying (sphinx-copybutton reads the text) gives the
 *    output exactly. Pygments closes its spans at each line end; a block whose line does not
 *    (a hand-written <pre>) is left as it is and still wraps, without the indent.
 * 2. The menu buttons in the article header open the sidebars. pydata-sphinx-theme 0.17 wires
 *    only the first .primary-toggle and .secondary-toggle of the page, the copies in the top
 *    bar that sphinx-book-theme 1.3 hides (and segnotes.css removes): in the stock build the
 *    buttons a reader sees on a phone opened nothing. They now forward their click.
 * 3. A hidden cell whose first line is "# @title Solution to exercise N" (a solution in
 *    Colab's form view) is labelled "Show solution to exercise N" instead of "Show code cell
 *    content".
 * 4. The sidebar's search box stays under its title, both pinned at the top (segnotes.css):
 *    the script passes the title's height to the stylesheet.
 */
(() => {
  const balanced = (line) =>
    (line.match(/<span\b/g) || []).length === (line.match(/<\/span>/g) || []).length;

  function splitLines(pre) {
    const lines = pre.innerHTML.split("\n");
    const last = lines.length && lines[lines.length - 1] === "" ? lines.pop() : null;
    if (!lines.every(balanced)) return;
    const probe = document.createElement("span");
    pre.innerHTML =
      lines
        .map((html) => {
          probe.innerHTML = html;
          const indent = probe.textContent.match(/^ */)[0].length;
          return `<span class="sn-line" style="--sn-indent: ${indent}ch">${html}</span>`;
        })
        .join("\n") + (last === null ? "" : "\n");
  }

  function forwardToggles() {
    for (const kind of ["primary", "secondary"]) {
      const hidden = document.querySelector(`#pst-header .${kind}-toggle`);
      const shown = document.querySelector(`.bd-header-article .${kind}-toggle`);
      if (!hidden || !shown) continue;
      shown.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation();
        hidden.click();
      });
    }
  }

  function labelSolutions() {
    for (const cell of document.querySelectorAll("div.cell.tag_hide-cell")) {
      const code = cell.querySelector(".cell_input pre");
      const title = code && code.textContent.match(/^\s*# @title (.+)/);
      if (!title) continue;
      const what = title[1].trim().replace(/^./, (c) => c.toLowerCase());
      for (const summary of cell.querySelectorAll("details.above-input > summary")) {
        const [show, hide] = [summary.querySelector(".collapsed"), summary.querySelector(".expanded")];
        if (show) show.textContent = `Show ${what}`;
        if (hide) hide.textContent = `Hide ${what}`;
      }
    }
  }

  function pinSidebarTitle() {
    const sidebar = document.querySelector(".bd-sidebar-primary");
    const brand = sidebar && sidebar.querySelector(".sidebar-primary-item:has(> .navbar-brand)");
    if (!brand) return;
    // on the root: on narrow screens the theme moves the sidebar's content into a dialog
    const root = document.documentElement;
    const pin = () => root.style.setProperty("--sn-brand-height", `${brand.offsetHeight}px`);
    pin();
    new ResizeObserver(pin).observe(brand);
  }

  function run() {
    pinSidebarTitle();
    document.querySelectorAll("div.cell_output pre").forEach(splitLines);
    forwardToggles();
    labelSolutions();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", run);
  } else {
    run();
  }
})();
