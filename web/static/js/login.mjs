// Carry ?next= into the form and show the error flag the server redirected with.
const params = new URLSearchParams(location.search);
const next = params.get("next");
if (next && next.startsWith("/") && !next.startsWith("//")) {
  document.getElementById("next").value = next;
}
if (params.get("error")) document.getElementById("error").hidden = false;
