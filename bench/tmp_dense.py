import time, numpy as np, warnings, pandas as pd
warnings.simplefilter("ignore")
import logging; logging.disable(logging.WARNING)
from tests.test_user_models import linear_svc_on_log_balance, bank_frame
from sklearn_service.serving_model import ServingModel
from sklearn_service.signature import Signature
m = linear_svc_on_log_balance()
s = ServingModel(m, Signature.from_estimator(m), outputs=())
X = bank_frame(1000, 4)[0].to_numpy()
for bad in (1, 10, 1000):
    Y = X.copy(); Y[np.linspace(0, 999, bad).astype(int), 1] = -5
    t = time.perf_counter(); out = s.predict(Y); el = time.perf_counter() - t
    ok = ~np.isnan(out)
    assert ok.sum() == 1000 - bad
    assert not ok.any() or (m.classes_[out[ok].astype(int)] == m.predict(pd.DataFrame(Y[ok], columns=m.feature_names_in_))).all()
    print(bad, "bad rows:", round(el, 3), "s", int(np.isnan(out).sum()))
