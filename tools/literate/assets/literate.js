/* The site's pages, lesson pages most: the little that CSS cannot do alone.

   - Sticky code: where a section's prose is much taller than its code, and the code fits the window, the
     code column stays in view while the prose scrolls by (class `lit-sticky`, styled in literate.css).
   - Readable diagrams: a diagram that its column would shrink until its text is under 9 px is drawn at
     the width that keeps its text at 9 px, and its box scrolls; a click still opens it full size.
   - Paths in the header wrap after a `/` or `.`, never inside a name.
   - A link to one line (`#L123`) shows that line mid-window.
   - A box that scrolls sideways (a wide equation, table or test name, a notebook's code cell; on a phone
     most do) is a tab stop, as Material makes its own code blocks, so the arrow keys can scroll it: not
     every browser lets the keyboard into a scrolling box that holds nothing focusable.
   - The theme's search dialog gets a name.

   Runs once per page load and again whenever Material swaps the page in (`document$`), and re-measures on
   resize. Nothing here loads anything. */
(function () {
  "use strict";

  var MIN_TEXT_PX = 9;
  var TALLER = 1.25; // prose this many times taller than its code makes the code sticky

  function headerHeight() {
    var header = document.querySelector(".md-header");
    return header ? header.getBoundingClientRect().height : 48;
  }

  function markSticky(page) {
    var room = window.innerHeight - headerHeight() - 16;
    page.querySelectorAll(".lit-section").forEach(function (section) {
      var prose = section.querySelector(":scope > .lit-prose");
      var code = section.querySelector(":scope > .lit-code");
      if (!prose || !code) return;
      var codeHeight = code.getBoundingClientRect().height;
      var proseHeight = prose.getBoundingClientRect().height;
      var sticky = codeHeight > 0 && codeHeight <= room && proseHeight > TALLER * codeHeight;
      section.classList.toggle("lit-sticky", sticky);
    });
  }

  /* The smallest on-screen size of a diagram's text, in CSS pixels. */
  function smallestText(svg) {
    var smallest = Infinity;
    svg.querySelectorAll("text").forEach(function (text) {
      var matrix = text.getScreenCTM();
      var size = parseFloat(getComputedStyle(text).fontSize);
      if (!matrix || !size) return;
      var scale = Math.sqrt(matrix.a * matrix.a + matrix.b * matrix.b);
      smallest = Math.min(smallest, size * scale);
    });
    return smallest;
  }

  function readableDiagrams(page) {
    page.querySelectorAll(".lit-svg > svg").forEach(function (svg) {
      svg.style.width = "";
      svg.style.maxWidth = "";
      var shown = svg.getBoundingClientRect().width;
      var smallest = smallestText(svg);
      if (!shown || !isFinite(smallest) || smallest >= MIN_TEXT_PX) return;
      svg.style.maxWidth = "none";
      svg.style.width = Math.ceil((shown * MIN_TEXT_PX) / smallest) + "px";
    });
  }

  /* Paths and module names in the header (`tests/foundations/test_autograd.py`,
     `annotated.foundations.autograd`) may wrap after a `/` or a `.` on a phone, never inside a
     name: CSS offers no such break, so mark each with <wbr>. */
  function breakablePaths(page) {
    page.querySelectorAll(".lit-facts a, .lit-facts code").forEach(function (element) {
      if (element.hasAttribute("data-lit-wbr") || element.closest(".lit-bench-wrap")) return;
      element.setAttribute("data-lit-wbr", "");
      var walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
      var nodes = [];
      for (var node = walker.nextNode(); node; node = walker.nextNode()) nodes.push(node);
      nodes.forEach(function (text) {
        var parts = text.data.split(/(?<=[\/.])(?=[^\/.\s])/);
        if (parts.length < 2) return;
        var pieces = document.createDocumentFragment();
        parts.forEach(function (part, index) {
          if (index) pieces.appendChild(document.createElement("wbr"));
          pieces.appendChild(document.createTextNode(part));
        });
        text.parentNode.replaceChild(pieces, text);
      });
    });
  }

  /* A link to one line (`#L123`) shows that line in the middle of the window, with the code
     before it in view (an inline box takes no scroll-margin). */
  function centreTargetLine() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (!/^L\d+$/.test(id)) return;
    var line = document.getElementById(id);
    if (line) line.scrollIntoView({ block: "center" });
  }

  var CHINESE = document.documentElement.lang.indexOf("zh") === 0; // the edition, per page load

  var SCROLLING = {
    ".lit-math": ["equation", "公式"],
    ".lit-bench-wrap, .lit-worksheet-wrap, .md-typeset__scrollwrap": ["table", "表格"],
    ".jupyter-wrapper .highlight-ipynb": ["code cell", "代码单元"],
    ".lit-facts code.lit-long": ["test name", "测试名"],
  };

  function reachableScrolling() {
    Object.keys(SCROLLING).forEach(function (selector) {
      document.querySelectorAll(selector).forEach(function (box) {
        if (box.scrollWidth > box.clientWidth + 1) {
          box.tabIndex = 0;
          box.setAttribute("role", "region");
          box.setAttribute("aria-label", SCROLLING[selector][CHINESE ? 1 : 0]);
        } else if (box.getAttribute("role") === "region") {
          box.removeAttribute("tabindex");
          box.removeAttribute("role");
          box.removeAttribute("aria-label");
        }
      });
    });
  }

  // The theme wraps each code block's copy button in a <nav>: a navigation landmark per
  // block, thirty unnamed ones on a lesson page. The button stays; the landmark goes.
  function quietCodeButtons() {
    document.querySelectorAll("nav.md-code__nav:not([role])").forEach(function (nav) {
      nav.setAttribute("role", "none");
    });
  }

  function layout() {
    reachableScrolling();
    quietCodeButtons();
    var page = document.querySelector(".lit-page");
    if (!page) return;
    breakablePaths(page);
    readableDiagrams(page);
    markSticky(page);
  }

  var pending = 0;
  function relayout() {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(layout);
  }

  // The theme's search box opens as a dialog without a name; a screen reader announces one.
  // It sits in the header, which a page swap keeps: naming it once is enough.
  var search = document.querySelector('.md-search[role="dialog"]');
  if (search) search.setAttribute("aria-label", CHINESE ? "搜索" : "Search");

  // A navigation section with a page of its own ("Source reading") is labelled by its
  // toggle, an icon without text, so such sections were landmarks without a name, and
  // two of them landmarks with the same one. Each is named by the title it shows.
  document.querySelectorAll("nav.md-nav[aria-labelledby]").forEach(function (nav) {
    var label = document.getElementById(nav.getAttribute("aria-labelledby"));
    var title = nav.querySelector(":scope > .md-nav__title");
    var name = title ? title.textContent.trim() : "";
    if (label && !label.textContent.trim() && name) {
      nav.removeAttribute("aria-labelledby");
      nav.setAttribute("aria-label", name);
    }
  });

  window.addEventListener("resize", relayout);
  window.addEventListener("hashchange", centreTargetLine);
  window.addEventListener("load", function () {
    requestAnimationFrame(centreTargetLine);
  });
  if (typeof window.document$ !== "undefined" && window.document$.subscribe) {
    window.document$.subscribe(relayout);
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", relayout);
  } else {
    relayout();
  }
  // Web fonts change the height of prose and math once they arrive.
  if (document.fonts && document.fonts.ready) document.fonts.ready.then(relayout);
})();
