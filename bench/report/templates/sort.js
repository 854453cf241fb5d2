// Click a column header to sort the unit table by it (again to reverse); missing values sort last.
document.querySelectorAll("th[data-sort]").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var descending = th.getAttribute("aria-sort") !== "descending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var numeric = th.dataset.sort === "number";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      if (numeric) {
        x = parseFloat(x); y = parseFloat(y);
        if (isNaN(x)) return isNaN(y) ? 0 : 1;
        if (isNaN(y)) return -1;
        return descending ? y - x : x - y;
      }
      return descending ? String(y).localeCompare(x) : String(x).localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
