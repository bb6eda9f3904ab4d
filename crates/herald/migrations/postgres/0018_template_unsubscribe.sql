-- Issue 12: a stored template may carry one-click unsubscribe (`"unsubscribe": {"list": "newsletter"}`); every
-- message and batch made from it gets the List-Unsubscribe headers for that list unless the request says
-- otherwise. NULL: the template asks for no unsubscribe link.
ALTER TABLE templates ADD COLUMN unsubscribe_list TEXT;
