(function () {
  var t = document.getElementById('toggle-heat');
  if (t) { t.addEventListener('change', function () { document.body.classList.toggle('noheat', !t.checked); }); }
})();
