UPDATE orders SET status = 'paid', updated_at = now() WHERE id % 10 = 0;
DELETE FROM orders WHERE id % 97 = 0;
INSERT INTO orders (id, customer, amount, status) VALUES (1001, 'new customer', 42.00, 'placed');
ALTER TABLE orders ADD COLUMN channel text;
UPDATE orders SET channel = 'web' WHERE id <= 10;
